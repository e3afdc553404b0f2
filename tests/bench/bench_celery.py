"""Celery on the same Redis, with the same no-op task and a Redis result backend (as the
generated project's default). Configured by BENCH_REDIS_URL and BENCH_QUEUE (the key prefix
of its results)."""

from __future__ import annotations

import os

from bench_probe import probe
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    result_backend_transport_options={"global_keyprefix": f"{os.environ['BENCH_QUEUE']}:"},
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench:noop")
def noop(sent_at: float) -> None:
    probe.hit(sent_at)
