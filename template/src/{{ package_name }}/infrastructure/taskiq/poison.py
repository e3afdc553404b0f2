"""Poison messages: deliveries no worker of this project can ever run.

taskiq's receiver acks and drops a message it cannot parse or whose task it does not know,
leaving only a log line. The brokers of this project check each delivery first and set such
a message aside (a `<queue>:poison` Redis stream, a `<queue>.poison` RabbitMQ queue), where an
operator can read it, fix what sent it, and send it again. So is a message delivered more than
`TASKIQ_MAX_DELIVERIES` times without an ack: each time, the process running it died.
"""

from taskiq import AsyncBroker, BrokerMessage, TaskiqFormatter, TaskiqMessage

# Longest reason kept with a parked message: a parse error can quote the whole payload.
MAX_REASON_LENGTH = 500
# Parsed messages kept for the receiver at most. Past that the oldest are forgotten and parsed
# again when they run: enough for every message a worker process prefetches.
PARSED_MESSAGES_KEPT = 1024


class ParseOnceFormatter(TaskiqFormatter):
    """The broker's formatter, handing taskiq's receiver the message the poison check parsed.

    Each delivery is parsed before it is admitted (see poison_reason); the receiver would parse
    the same bytes again, about 20 us of a worker's CPU per task. The parsed message is kept
    under the identity of its bytes (held here, so no other object can take that id) until
    the receiver asks for it.
    """

    def __init__(self, inner: TaskiqFormatter) -> None:
        self.inner = inner
        self._parsed: dict[int, tuple[bytes, TaskiqMessage]] = {}

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        return self.inner.dumps(message)

    def loads(self, message: bytes) -> TaskiqMessage:
        kept = self._parsed.pop(id(message), None)
        if kept is not None and kept[0] is message:
            return kept[1]
        return self.inner.loads(message)

    def parse(self, data: bytes) -> TaskiqMessage:
        """`data` parsed, labels included, and kept for the receiver's `loads(data)`."""
        message = self.inner.loads(data)
        message.parse_labels()
        # Parsed already: the receiver's own parse_labels() must not convert them twice.
        message.labels_types = None
        self._parsed[id(data)] = (data, message)
        if len(self._parsed) > PARSED_MESSAGES_KEPT:
            del self._parsed[next(iter(self._parsed))]
        return message


def poison_reason(broker: AsyncBroker, data: bytes) -> str | None:
    """Why no worker of `broker` could run this message, or None when one can.

    The checks taskiq's receiver makes before it runs a message, made earlier (and only once
    where the broker's formatter is a ParseOnceFormatter).
    """
    formatter = broker.formatter
    try:
        if isinstance(formatter, ParseOnceFormatter):
            message = formatter.parse(data)
        else:
            message = formatter.loads(data)
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
