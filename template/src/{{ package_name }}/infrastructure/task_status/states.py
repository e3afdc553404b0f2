"""Task states, the store that keeps them, and the errors of cancelling."""

import asyncio
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from taskiq.exceptions import NoResultError

StateName = Literal["pending", "running", "success", "failure", "cancelled"]
PENDING: StateName = "pending"
RUNNING: StateName = "running"
SUCCESS: StateName = "success"
FAILURE: StateName = "failure"
CANCELLED: StateName = "cancelled"
FINISHED: frozenset[str] = frozenset({SUCCESS, FAILURE})
CANCELLABLE: frozenset[str] = frozenset({PENDING, RUNNING})


class TaskStateStore(Protocol):
    """Where every process reads and writes task states; one per broker.

    Implementations never overwrite `cancelled`: a late "running" or "success" from a worker
    loses to the cancel.
    """

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def get_state(self, task_id: str) -> StateName | None:
        """The task's state, or None when no task with this id was sent (or it expired)."""
        ...

    async def set_states(self, states: Mapping[str, StateName]) -> None:
        """Record states of many tasks at once (a worker batches its writes)."""
        ...

    async def cancel(self, task_id: str) -> StateName | None:
        """Cancel a pending or running task and tell the workers; return the state before.

        None (unknown) and finished states leave the record as it was.
        """
        ...

    async def follow_cancellations(
        self, on_cancel: Callable[[str], None], ready: asyncio.Event
    ) -> None:
        """Call `on_cancel` with every recent and every new cancelled task id, until cancelled.

        Sets `ready` once the recent ones were delivered, so a worker takes no task before.
        """
        ...


class TaskCancelledError(NoResultError):
    """Raised inside a cancelled task.

    A NoResultError, so taskiq acks the message without storing a generic failure and retry
    middlewares leave it alone.
    """

    __template__ = "The task was cancelled"

    def __init__(self, *_message: object) -> None:
        # taskiq rebuilds a stored error from its message: a reader gets this class back.
        super().__init__()


class UnknownTaskError(LookupError):
    """No task with this id was sent (or its state expired)."""


class TaskFinishedError(Exception):
    """The task already finished: there is nothing left to cancel."""

    def __init__(self, task_id: str, state: StateName) -> None:
        super().__init__(f"Task {task_id!r} already finished ({state})")
        self.state = state
