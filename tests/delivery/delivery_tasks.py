"""Test-only tasks that the delivery scenarios add to a generated project's worker.

Imported by `taskiq worker <pkg>...:default_broker delivery_tasks` with this directory on
PYTHONPATH; never part of a generated project. DELIVERY_PACKAGE names the project's package,
DELIVERY_MARKERS a directory where tasks leave `started-<id>-<pid>` / `finished-<id>-<pid>`.
"""

import asyncio
import importlib
import os
import time
from pathlib import Path
from typing import Any

from taskiq import Context, TaskiqDepends

_PACKAGE = os.environ["DELIVERY_PACKAGE"]
_MARKERS = Path(os.environ["DELIVERY_MARKERS"])
_registry = importlib.import_module(f"{_PACKAGE}.infrastructure.taskiq.registry")
_deps = importlib.import_module(f"{_PACKAGE}.infrastructure.taskiq.deps")
_notes = importlib.import_module(f"{_PACKAGE}.modules.notes.service")

# taskiq builds the dependency graph from these annotations at run time.
DBSession: Any = _deps.DBSession
INJECTED = TaskiqDepends()  # the worker fills parameters defaulting to this


async def sleep_then_write(
    seconds: float,
    title: str,
    session: DBSession = INJECTED,
    context: Context = INJECTED,
) -> int:
    """Sleep, then write the note for this task id (once, like the example task)."""
    task_id = context.message.task_id
    (_MARKERS / f"started-{task_id}-{os.getpid()}").touch()
    await asyncio.sleep(seconds)
    note_id: int = await _notes.create_note_once(session, task_id=task_id, title=title, body="")
    (_MARKERS / f"finished-{task_id}-{os.getpid()}").touch()
    return note_id


sleep_task = _registry.register_task("delivery:sleep")(sleep_then_write)


async def block_then_write(
    seconds: float,
    title: str,
    session: DBSession = INJECTED,
    context: Context = INJECTED,
) -> int:
    """Block the worker's event loop for `seconds` in slices (as CPU-bound or blocking code
    does), then write the note: nothing else in this worker process runs meanwhile."""
    task_id = context.message.task_id
    (_MARKERS / f"started-{task_id}-{os.getpid()}").touch()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        time.sleep(0.2)
    note_id: int = await _notes.create_note_once(session, task_id=task_id, title=title, body="")
    (_MARKERS / f"finished-{task_id}-{os.getpid()}").touch()
    return note_id


block_task = _registry.register_task("delivery:block")(block_then_write)


if os.environ.get("DELIVERY_KILL_AT"):
    import crash_hooks

    crash_hooks.install(_PACKAGE, os.environ["DELIVERY_KILL_AT"])


async def write_note_retrying(
    title: str,
    session: DBSession = INJECTED,
    context: Context = INJECTED,
) -> int:
    """Write the note for this task id; a failure leaves `failed-<id>-<pid>-<unix time>` (when
    the attempt started; with the error) and is retried, so a database outage only delays
    the note."""
    task_id = context.message.task_id
    started = time.time()
    try:
        note_id: int = await _notes.create_note_once(session, task_id=task_id, title=title, body="")
    except Exception as exc:
        (_MARKERS / f"failed-{task_id}-{os.getpid()}-{started:.3f}").write_text(repr(exc))
        raise
    return note_id


write_task = _registry.register_task("delivery:write", retry_on_error=True, retry_on=(Exception,))(
    write_note_retrying
)
