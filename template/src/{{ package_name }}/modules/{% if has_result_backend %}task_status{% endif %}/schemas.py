"""Task status bodies."""

from typing import Any, Literal

from pydantic import BaseModel

TaskStatusName = Literal["pending", "running", "success", "failure"]


class TaskStatus(BaseModel):
    task_id: str
    status: TaskStatusName
    result: Any = None
    error: str | None = None
