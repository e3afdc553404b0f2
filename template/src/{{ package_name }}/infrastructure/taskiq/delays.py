"""The `delay` label: how long a sent task waits before a worker may start it.

`task.kicker().with_labels(delay=2.5).kiq(...)` sends a task that runs 2.5 s later. No
taskiq-redis broker reads the label, and taskiq-aio-pika needs a delay queue, so the brokers
of this project honour it themselves (see redis_stream.py / rabbitmq.py).
"""

import math
from collections.abc import Mapping
from typing import Any

DELAY_LABEL = "delay"


def delay_seconds(labels: Mapping[str, Any]) -> float | None:
    """The positive delay a message asks for, or None to run it at once.

    Labels travel as strings ("2.5"); anything that is not a positive finite number
    (missing, "None", "0", "-1", "nan") means no delay.
    """
    raw = labels.get(DELAY_LABEL)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def delay_milliseconds(seconds: float, step_ms: int = 1) -> int:
    """`seconds` in milliseconds, rounded up to a whole `step_ms`: a delay is never cut short.

    Rounded to the microsecond first, so 0.3 s is 300 ms and not 301 (0.3 * 1000 is
    300.00000000000006 in floating point).
    """
    steps = math.ceil(round(seconds * 1000, 3) / step_ms)
    return max(1, steps) * step_ms
