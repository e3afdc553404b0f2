"""Test-only crash points, installed in a worker by delivery_tasks when DELIVERY_KILL_AT is set.

DELIVERY_KILL_AT=ack   the process dies right after the broker acked a message (the template's
                       AckGate acks once the final state is stored): the state must be final.
DELIVERY_KILL_AT=write the process dies right after the final state's write was issued, before
                       the batch holding it is stored: the message must not have been acked.

Each kills once per DELIVERY_MARKERS directory, like an OOM kill
at the worst moment (a `killed-<point>-once` marker). Never part of a generated project.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from pathlib import Path
from typing import Any

KILLED_EXIT_CODE = 137


def _kill_once(point: str) -> bool:
    marker = Path(os.environ["DELIVERY_MARKERS"]) / f"killed-{point}-once"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def install(package: str, point: str) -> None:
    if point == "ack":
        # Around the broker's own ack, which the template's AckGate calls once the state is
        # stored (taskiq's AckController.ack returns before that).
        acks = importlib.import_module(f"{package}.infrastructure.taskiq.acks")
        wrap = acks.AckGate.wrap

        def wrap_then_die(self: Any, ack: Any, reject: Any = None) -> Any:
            async def ack_then_die() -> None:
                await ack()
                if _kill_once("ack"):
                    os._exit(KILLED_EXIT_CODE)

            return wrap(self, ack_then_die, reject)

        acks.AckGate.wrap = wrap_then_die
    elif point == "write":
        writer = importlib.import_module(f"{package}.infrastructure.task_status.writer")
        write = writer.StateWriter.write

        def write_then_die(self: Any, task_id: str, state: str) -> None:
            write(self, task_id, state)
            # The batch waits `linger` before it is written: this runs first.
            if state in {"success", "failure"} and _kill_once("write"):
                asyncio.get_running_loop().call_soon(os._exit, KILLED_EXIT_CODE)

        writer.StateWriter.write = write_then_die
    else:
        raise ValueError(f"unknown DELIVERY_KILL_AT {point!r}")
