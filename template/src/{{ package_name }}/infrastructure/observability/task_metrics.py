"""The worker's task metrics: taskiq's, added up in memory and written once a second.

taskiq's PrometheusMiddleware updates five values per task, each a locked write to a file
shared by the worker processes (PROMETHEUS_MULTIPROC_DIR): about 45 us of a worker's CPU per
task, the largest single cost of this project's features in the benchmark. This subclass
keeps its metrics (names, labels, buckets) and only changes when they are written: the counts
collect in the process and go to the files every `flush_interval` seconds and at shutdown.
So a scrape can lag up to that long, and a process killed outright loses that long's counts.
"""

import asyncio
import bisect
import contextlib
import logging
import os
from collections import Counter, defaultdict
from typing import Any

from taskiq import TaskiqMessage, TaskiqResult
from taskiq.middlewares.prometheus_middleware import PrometheusMiddleware

from .metrics_server import start_metrics_server
from .shared_files import MULTIPROC_DIR_ENV, shared_files_registry

FLUSH_INTERVAL_SECONDS = 1.0

logger = logging.getLogger(__name__)


class BufferedPrometheusMiddleware(PrometheusMiddleware):
    """taskiq's task metrics, written in batches (see the module's docstring)."""

    def __init__(
        self,
        *args: Any,
        token: str = "",
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.token = token  # the bearer token a scrape must send (empty: none is accepted)
        self.flush_interval = flush_interval
        self._received: Counter[str] = Counter()
        self._succeeded: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._saved: Counter[str] = Counter()
        # Per task name, observations per histogram bucket (each counted in the first bucket
        # whose bound it does not exceed, as prometheus_client stores them) and their sum.
        self._bounds: list[float] = list(self.execution_time._upper_bounds)
        self._buckets: defaultdict[str, list[int]] = self._new_buckets()
        self._sums: defaultdict[str, float] = defaultdict(float)
        self._flusher: asyncio.Task[None] | None = None

    def _new_buckets(self) -> defaultdict[str, list[int]]:
        return defaultdict(lambda: [0] * len(self._bounds))

    def startup(self) -> None:
        # Not the parent's startup(): its port (prometheus_client's server) has no credential.
        if self.broker.is_worker_process:
            self._serve_metrics()
        # Called by the broker's startup(), inside the worker's event loop.
        self._flusher = asyncio.create_task(self._flush_forever(), name="task-metrics-flush")

    def _serve_metrics(self) -> None:
        # The files of every worker process (they inherit PROMETHEUS_MULTIPROC_DIR).
        registry = shared_files_registry(os.environ[MULTIPROC_DIR_ENV])
        try:
            start_metrics_server(
                registry, host=self.server_addr, port=self.server_port, token=self.token
            )
        except OSError as exc:
            # Another worker process holds the port: it reports this one's metrics too.
            logger.debug("Not serving metrics here: %s", exc)

    async def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self._received[message.task_name] += 1
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        name = message.task_name
        (self._failed if result.is_err else self._succeeded)[name] += 1
        self._buckets[name][bisect.bisect_left(self._bounds, result.execution_time)] += 1
        self._sums[name] += result.execution_time

    def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self._saved[message.task_name] += 1

    def flush(self) -> None:
        """Write what was counted since the last flush to the metrics."""
        for counts, metric in (
            (self._received, self.received_tasks),
            (self._succeeded, self.success_tasks),
            (self._failed, self.found_errors),
            (self._saved, self.saved_results),
        ):
            for name, count in counts.items():
                metric.labels(name).inc(count)
            counts.clear()
        buckets, sums = self._buckets, self._sums
        self._buckets, self._sums = self._new_buckets(), defaultdict(float)
        for name, counts_by_bucket in buckets.items():
            # What Histogram.observe() does for one value, done once for all of them.
            child = self.execution_time.labels(name)
            child._sum.inc(sums[name])
            for value, count in zip(child._buckets, counts_by_bucket, strict=True):
                if count:
                    value.inc(count)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                self.flush()
            except Exception:
                logger.warning("Could not write task metrics", exc_info=True)
