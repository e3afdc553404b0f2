"""Field types of response bodies."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def _as_utc(value: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were stored in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# A timestamp that always carries its offset, as OpenAPI's "date-time" requires.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
