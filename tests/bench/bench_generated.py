"""The no-op task, registered in the generated project the way its own tasks are.

Passed to the generated worker as an extra module. BENCH_PACKAGE names the generated
package. BENCH_WITHOUT (comma-separated middleware class names) removes middlewares from the
generated broker before the worker starts: the cost of each one, measured by leaving it out.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from bench_probe import probe

_package = os.environ["BENCH_PACKAGE"]
register_task: Any = importlib.import_module(
    f"{_package}.infrastructure.taskiq.registry"
).register_task
broker: Any = importlib.import_module(f"{_package}.infrastructure.taskiq.app").broker

_without = {name.strip() for name in os.environ.get("BENCH_WITHOUT", "").split(",") if name}
if _without:
    broker.middlewares = [m for m in broker.middlewares if type(m).__name__ not in _without]


@register_task("bench:noop")
async def noop(sent_at: float) -> None:
    probe.hit(sent_at)
