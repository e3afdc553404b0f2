"""A task for the KEDA metric check: no database, no side effect (loaded by the worker)."""

from __future__ import annotations

import importlib
import os

broker = importlib.import_module(
    f"{os.environ['KEDA_CHECK_PACKAGE']}.infrastructure.taskiq.app"
).broker


@broker.task(task_name="keda_check:noop")
async def noop() -> None:
    return None
