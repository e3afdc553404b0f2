"""Dead-letter bodies of the API."""

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class DeadLetterSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_name: str
    task_id: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    redriven_at: datetime | None
    redrive_task_id: str | None


class DeadLetterRead(DeadLetterSummary):
    args: list[Any]
    # Shown as "kwargs": a field of that name clashes with the **kwargs of the __init__ that the
    # pydantic mypy plugin writes.
    keyword_args: dict[str, Any] = Field(
        validation_alias=AliasChoices("kwargs"), serialization_alias="kwargs"
    )
    labels: dict[str, Any]
    traceback: str


class RedriveAccepted(BaseModel):
    task_id: str
