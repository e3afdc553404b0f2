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


if os.environ.get("BENCH_DB_TASK"):
    # The database layer loaded at start-up, as bare taskiq's is: a trial measures tasks, not
    # the one import a generated worker makes on its first database task.
    importlib.import_module(f"{_package}.infrastructure.db.engine")
    _deps: Any = importlib.import_module(f"{_package}.infrastructure.taskiq.deps")
    from taskiq import Context, TaskiqDepends

    DBSession: Any = _deps.DBSession
    _INJECTED: Any = TaskiqDepends()

    @register_task("bench:write")
    async def write(
        sent_at: float, session: DBSession = _INJECTED, context: Context = _INJECTED
    ) -> None:
        """The `db` section's task: one row keyed by the task id, as notes:create writes it."""
        from bench_rows import NOTE_INSERT

        await session.execute(NOTE_INSERT, {"task_id": context.message.task_id, "title": "bench"})
        await session.commit()
        probe.hit(sent_at)
