"""Poison messages: deliveries no worker of this project can ever run.

taskiq's receiver acks and drops a message it cannot parse or whose task it does not know,
leaving only a log line. The brokers of this project check each delivery first and set such
a message aside (a `<queue>:poison` Redis stream, a `<queue>.poison` RabbitMQ queue), where an
operator can read it, fix what sent it, and send it again. So is a message delivered more than
`TASKIQ_MAX_DELIVERIES` times without an ack: each time, the process running it died.
"""

from taskiq import AsyncBroker

# Longest reason kept with a parked message: a parse error can quote the whole payload.
MAX_REASON_LENGTH = 500


def poison_reason(broker: AsyncBroker, data: bytes) -> str | None:
    """Why no worker of `broker` could run this message, or None when one can.

    The checks taskiq's receiver makes before it runs a message, made earlier.
    """
    try:
        message = broker.formatter.loads(data)
        message.parse_labels()
    except Exception as exc:
        return f"unreadable message: {type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]
    if broker.find_task(message.task_name) is None:
        return f"unknown task {message.task_name!r}"[:MAX_REASON_LENGTH]
    return None


def redelivery_reason(deliveries: int, max_deliveries: int) -> str | None:
    """Why a message delivered `deliveries` times (this one included) is set aside, or None."""
    if deliveries <= max_deliveries:
        return None
    return (
        f"delivered {deliveries} times without being acknowledged (the worker running it died"
        f" each time; TASKIQ_MAX_DELIVERIES={max_deliveries})"
    )
