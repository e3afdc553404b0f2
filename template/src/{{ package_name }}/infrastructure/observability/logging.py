"""Structured logs: one JSON object per line, with the running task's id and name.

`configure_logging()` sends every record of the process (the app's, uvicorn's, taskiq's) through
one JSON handler. `TaskLogContextMiddleware` puts the id and name of the task being executed in a
context variable, and the handler's filter copies them onto each record logged while it runs.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult

# (task_id, task_name) of the tasks being executed in this context, innermost last: a stack,
# because an in-memory broker runs a task that another task sends inside the sender's context.
_task_stack: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("task_stack", default=())

# Attributes every LogRecord has; any other attribute came from `extra=` and becomes a field.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "task_id",
    "task_name",
}
# Loggers that configure handlers of their own; they propagate to the root handler instead.
_THIRD_PARTY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def current_task() -> tuple[str, str] | None:
    """(task_id, task_name) of the task being executed here, or None outside a task."""
    stack = _task_stack.get()
    return stack[-1] if stack else None


class TaskContextFilter(logging.Filter):
    """Adds `task_id` and `task_name` (None outside a task) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task()
        record.task_id, record.task_name = task if task is not None else (None, None)
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: timestamp, level, logger, message, task, extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            payload["task_id"] = task_id
            payload["task_name"] = getattr(record, "task_name", None)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler[TextIO]):
    """The handler configure_logging() installs (a class of its own, so it can be replaced)."""


def configure_logging(level: str | int = "INFO", *, stream: TextIO | None = None) -> None:
    """Log every record of the process as JSON to `stream` (stderr by default).

    Idempotent. Replaces the handler of an earlier call and plain stream handlers such as
    `logging.basicConfig()`'s (taskiq's CLI installs one), so no line is printed twice; keeps
    any other handler (a file handler, pytest's log capture).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler or isinstance(handler, _JsonHandler):
            root.removeHandler(handler)
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TaskContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _THIRD_PARTY_LOGGERS:
        third_party = logging.getLogger(name)
        third_party.handlers.clear()
        third_party.propagate = True


class TaskLogContextMiddleware(TaskiqMiddleware):
    """Makes the executing task's id and name part of every log record emitted while it runs.

    taskiq runs each message in an asyncio task of its own (and copies that context into the
    thread of a sync task), so the context variable set here is seen by that task alone.
    """

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        _task_stack.set((*_task_stack.get(), (message.task_id, message.task_name)))
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        stack = _task_stack.get()
        if stack:
            _task_stack.set(stack[:-1])
