"""What every benchmarked worker's no-op task calls: one in-memory append per task.

Samples ("pid:sent_at:started_at") reach Redis in batches from a background thread every
50 ms, so the probe costs every worker the same few microseconds per task, whatever its
framework (asyncio taskiq workers, Celery's prefork children, the raw consumers).
Configured by the environment: BENCH_REDIS_URL, BENCH_PROBE_KEY.
"""

from __future__ import annotations

import os
import threading
import time

import redis

FLUSH_SECONDS = 0.05


class Probe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[str] = []
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hit(self, sent_at: float) -> None:
        started_at = time.time()
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                # Started lazily, in the process that runs tasks (after any fork).
                self._pid = os.getpid()
                self._samples = []
                self._thread = threading.Thread(target=self._flush_forever, daemon=True)
                self._thread.start()
            self._samples.append(f"{self._pid}:{sent_at:.6f}:{started_at:.6f}")

    def _flush_forever(self) -> None:
        client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        key = os.environ["BENCH_PROBE_KEY"]
        while True:
            time.sleep(FLUSH_SECONDS)
            with self._lock:
                batch, self._samples = self._samples, []
            if batch:
                client.rpush(key, *batch)
                client.expire(key, 3600)


probe = Probe()
