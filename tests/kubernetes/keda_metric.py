"""The number KEDA's trigger would read, for tasks the generated code sends (tests/test_kubernetes.py).

Run with a python that has the project's dependencies, from the project directory, with the
broker settings in the environment and the trigger's names as arguments (taken from the
rendered manifests by the caller):

    python keda_metric.py --package PKG --count N --workdir DIR
        (--stream S --group G --db D | --queue Q)

Sends N tasks with no worker running and reads the metric the way KEDA's scaler does (Redis:
XINFO GROUPS, the group's `lag`; RabbitMQ: a passive queue declare's message count), starts
the project's worker, waits for the metric to reach 0 and runs the worker's liveness probe.
Prints one JSON object: {"before": n, "after": n, "liveness": exit code, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def redis_lag(stream: str, group: str, db: int) -> int | None:
    from redis.asyncio import Redis

    client = Redis(
        host=os.environ["TASKIQ_REDIS_HOST"], port=int(os.environ["TASKIQ_REDIS_PORT"]), db=db
    )
    try:
        groups = await client.xinfo_groups(stream)
    except Exception:  # no stream yet: KEDA's scaler errors too
        return None
    finally:
        await client.aclose()
    for info in groups:
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return info.get("lag")
    return None


async def rabbitmq_length(queue: str) -> int | None:
    import aio_pika
    from aio_pika.exceptions import ChannelClosed

    from_settings = importlib_settings()
    connection = await aio_pika.connect(from_settings.rabbitmq_url)
    try:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except ChannelClosed:
            return None
        return declared.declaration_result.message_count
    finally:
        await connection.close()


def importlib_settings() -> Any:
    import importlib

    module = importlib.import_module(f"{ARGS.package}.infrastructure.config")
    return module.get_settings()


async def metric() -> int | None:
    if ARGS.queue:
        return await rabbitmq_length(ARGS.queue)
    return await redis_lag(ARGS.stream, ARGS.group, ARGS.db)


async def send(count: int) -> None:
    import keda_tasks

    broker = keda_tasks.broker
    await broker.startup()
    try:
        for _ in range(count):
            await keda_tasks.noop.kiq()
    finally:
        await broker.shutdown()


async def wait_for(value: int, within: float) -> int | None:
    deadline = time.monotonic() + within
    seen = await metric()
    while seen != value and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        seen = await metric()
    return seen


async def main() -> dict[str, Any]:
    result: dict[str, Any] = {"before_send": await metric()}
    await send(ARGS.count)
    await asyncio.sleep(1)  # nothing consumes: the figure must stay put
    result["before"] = await metric()
    log = Path(ARGS.workdir) / "worker.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(Path(ARGS.workdir) / "worker-state")}
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", f"{ARGS.package}.worker", "keda_tasks"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        result["after"] = await wait_for(0, within=120)
        # The worker's liveness probe, as the pod runs it, against the running worker.
        probe = [sys.executable, "-m", f"{ARGS.package}.infrastructure.taskiq.liveness"]
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(probe, env=env, capture_output=True, text=True)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        result["liveness"] = done.returncode
        result["liveness_output"] = done.stderr[-500:]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    result["worker_log"] = log.read_text(errors="replace")[-3000:]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--stream")
    parser.add_argument("--group")
    parser.add_argument("--db", type=int)
    parser.add_argument("--queue")
    ARGS = parser.parse_args()
    os.environ["KEDA_CHECK_PACKAGE"] = ARGS.package
    sys.path[:0] = [str(Path.cwd() / "src"), str(HERE)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path.cwd() / "src"), str(HERE)])
    print(json.dumps(asyncio.run(main())))
