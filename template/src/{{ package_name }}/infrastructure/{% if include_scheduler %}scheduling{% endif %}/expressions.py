"""Five-field cron expressions and time zones, checked the way taskiq's scheduler reads them.

taskiq decides when a cron schedule fires with pycron, which never matches what it cannot read
(`61 * * * *`, `0 0 * * 7`, month names, `*` inside a list) instead of rejecting it. Expressions
are checked here against the subset that pycron reads the same way, so a typo fails at import
time or with a 422, not by silently never running.
"""

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# (name, lowest, highest) of the five fields, in order.
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_DAY_NAMES = {
    name: number
    for number, names in enumerate(
        [
            ("sun", "sunday"),
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
        ]
    )
    for name in names
}


@dataclass(frozen=True)
class CronExpression:
    """A parsed expression: the values each field allows."""

    text: str  # normalised: single spaces
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    # Both day fields restricted: a day matching either one fires (cron's and pycron's rule).
    either_day: bool

    @classmethod
    def parse(cls, text: str) -> "CronExpression":
        """Parse `minute hour day-of-month month day-of-week`; ValueError says what is wrong."""
        fields = text.split()
        if len(fields) != len(_FIELDS):
            raise ValueError(
                f"a cron expression has 5 fields (minute hour day month weekday), got {text!r}"
            )
        minutes, hours, days, months, weekdays = (
            _parse_field(field, name, low, high, names=_DAY_NAMES if name == "day of week" else {})
            for field, (name, low, high) in zip(fields, _FIELDS, strict=True)
        )
        return cls(
            text=" ".join(fields),
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=weekdays,
            either_day="*" not in fields[2] and "*" not in fields[4],
        )

    def matches(self, moment: datetime) -> bool:
        """Whether the expression fires in the minute of `moment` (read in its own zone)."""
        weekday = moment.isoweekday() % 7
        in_days = moment.day in self.days
        in_weekdays = weekday in self.weekdays
        day_ok = (in_days or in_weekdays) if self.either_day else (in_days and in_weekdays)
        return (
            day_ok
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.month in self.months
        )


def normalize_cron(text: str) -> str:
    """The expression with single spaces, or ValueError when it is not valid."""
    return CronExpression.parse(text).text


def validate_timezone(name: str) -> str:
    """An IANA time zone name such as "UTC" or "Europe/Berlin", or ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (e.g. 'UTC', 'Europe/Berlin')") from exc
    return name


def _parse_field(
    text: str, name: str, low: int, high: int, names: dict[str, int]
) -> frozenset[int]:
    if text == "*":
        return frozenset(range(low, high + 1))
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name}: the step in {item!r} must be a whole number >= 1")
            step = int(step_text)
        if base == "*" and slash:
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            # pycron reads day names in a range only without a step.
            start = _value(first, name, low, high, {} if slash else names)
            end = _value(last, name, low, high, {} if slash else names)
            if start > end:
                raise ValueError(f"{name}: the range {base!r} runs backwards")
        elif slash:
            raise ValueError(f"{name}: a step needs '*' or a range before it, not {item!r}")
        else:
            start = end = _value(base, name, low, high, names)
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise ValueError(f"{name}: {text!r} is not a number from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        hint = " (use 0 for Sunday)" if name == "day of week" and value == 7 else ""
        raise ValueError(f"{name}: {value} is outside {low}-{high}{hint}")
    return value
