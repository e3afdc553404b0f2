"""The broker's raw rate: the same client libraries with no task framework in between.

Redis: XADD / XREADGROUP (100 at a time) / one XACK per message, as taskiq-redis does.
RabbitMQ: aio-pika publish with confirms / consume with prefetch 100 / one ack per message,
on a quorum queue as taskiq-aio-pika declares. Each consumer process calls the probe for
every message, like the tasks do.

    python bench_raw.py consume redis|rabbitmq QUEUE PROCESSES
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from bench_probe import probe

PREFETCH = 100


async def _create_group(client: Any, queue: str) -> None:
    with contextlib.suppress(Exception):  # BUSYGROUP: it exists
        await client.xgroup_create(queue, queue, id="0", mkstream=True)


async def produce_redis(queue: str, count: int) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(os.environ["BENCH_REDIS_URL"]) as client:
        await _create_group(client, queue)
        for start in range(0, count, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(start, min(count, start + 1000)):
                    pipe.xadd(queue, {b"sent_at": repr(time.time()).encode()})
                await pipe.execute()


async def consume_redis(queue: str) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(os.environ["BENCH_REDIS_URL"]) as client:
        await _create_group(client, queue)
        consumer = f"raw-{os.getpid()}"
        while True:
            reply = await client.xreadgroup(
                queue, consumer, {queue: ">"}, count=PREFETCH, block=1000
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    probe.hit(float(fields[b"sent_at"]))
                    await client.xack(queue, queue, entry_id)


def _quorum() -> dict[str, str]:
    return {"x-queue-type": "quorum"}


async def produce_rabbitmq(queue: str, count: int) -> None:
    import aio_pika

    connection = await aio_pika.connect_robust(os.environ["BENCH_RABBITMQ_URL"])
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments=_quorum())
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            repr(time.time()).encode(),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue,
                    )
                    for _ in range(start, min(count, start + 500))
                )
            )


async def consume_rabbitmq(queue: str) -> None:
    import aio_pika

    for attempt in range(10):
        try:
            connection = await aio_pika.connect_robust(os.environ["BENCH_RABBITMQ_URL"])
            break
        except Exception:
            if attempt == 9:
                raise
            await asyncio.sleep(0.5)
    async with connection:
        for attempt in range(10):
            try:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=PREFETCH)
                # Processes declaring one quorum queue at once can get INTERNAL_ERROR: retry.
                declared = await channel.declare_queue(queue, durable=True, arguments=_quorum())
                break
            except Exception:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        async with declared.iterator() as messages:
            async for message in messages:
                probe.hit(float(message.body))
                await message.ack()


def consume(kind: str, queue: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(consume_redis(queue) if kind == "redis" else consume_rabbitmq(queue))


def main() -> None:
    _, action, kind, queue, processes = sys.argv
    if action != "consume":
        raise SystemExit(f"unknown action {action!r}")
    children = [
        multiprocessing.Process(target=consume, args=(kind, queue)) for _ in range(int(processes))
    ]
    for child in children:
        child.start()
    signal.signal(signal.SIGTERM, lambda *_: [child.terminate() for child in children])
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
