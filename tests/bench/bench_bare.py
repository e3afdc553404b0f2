"""A bare taskiq broker: what a user gets from taskiq's documentation, nothing added.

The same broker class and settings the generated project uses (queue, consumer group,
prefetch = max async tasks), the same result backend, and the same no-op task: no middlewares,
no task states, no metrics, taskiq's default logging. Configured by the environment:
BENCH_BROKER (redis | rabbitmq), BENCH_QUEUE, BENCH_REDIS_URL, BENCH_RABBITMQ_URL,
BENCH_RESULT_BACKEND (redis | none), BENCH_CONCURRENCY.

With BENCH_DATABASE_URL ("taskiq-db"), the worker also carries the database layer that a task
writing rows needs: an ORM model, and an async SQLAlchemy engine (asyncpg) with a session
factory made at worker start-up. The no-op task stays the same: this contender tells what the
database layer weighs, which a generated worker loads only with its first database task.
"""

from __future__ import annotations

import os

from bench_probe import probe
from taskiq import AsyncBroker


def make_broker(
    kind: str, queue: str, *, result_backend: str, concurrency: int = 100
) -> AsyncBroker:
    broker: AsyncBroker
    if kind == "redis":
        from taskiq_redis import RedisStreamBroker

        broker = RedisStreamBroker(
            url=os.environ["BENCH_REDIS_URL"],
            queue_name=queue,
            consumer_group_name=queue,
            # "0": messages sent before the group existed are delivered (as generated).
            consumer_id="0",
            xread_count=concurrency,
            max_connection_pool_size=concurrency + 10,
        )
    else:
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

        broker = AioPikaBroker(
            url=os.environ["BENCH_RABBITMQ_URL"],
            exchange=Exchange(name=queue),
            task_queues=[Queue(name=queue)],
            dead_letter_queue=Queue(name=f"{queue}.dead_letter"),
            qos=concurrency,
        )
    if result_backend == "redis":
        from taskiq.serializers import ORJSONSerializer
        from taskiq_redis import RedisAsyncResultBackend

        broker = broker.with_result_backend(
            RedisAsyncResultBackend(
                redis_url=os.environ["BENCH_REDIS_URL"],
                serializer=ORJSONSerializer(),
                result_ex_time=3600,
                prefix_str=f"{queue}:result",
            )
        )
    return broker


broker = make_broker(
    os.environ.get("BENCH_BROKER", "redis"),
    os.environ.get("BENCH_QUEUE", "bench-bare"),
    result_backend=os.environ.get("BENCH_RESULT_BACKEND", "none"),
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
)


@broker.task(task_name="bench:noop")
async def noop(sent_at: float) -> None:
    probe.hit(sent_at)


@broker.task(task_name="notes:create")
async def create_note(title: str, body: str) -> None:
    """What the bare API sends (no worker runs it during the API benchmark)."""


if os.environ.get("BENCH_DATABASE_URL"):
    from sqlalchemy import Integer
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from sqlalchemy.pool import NullPool
    from taskiq import TaskiqEvents, TaskiqState

    class Base(DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = "bench_bare_rows"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def open_database(state: TaskiqState) -> None:
        state.engine = create_async_engine(os.environ["BENCH_DATABASE_URL"], poolclass=NullPool)
        state.sessions = async_sessionmaker(state.engine)

    @broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
    async def close_database(state: TaskiqState) -> None:
        await state.engine.dispose()


if os.environ.get("BENCH_DB_POOLED_URL"):
    # "taskiq-pooled" (the `db` section): bare taskiq with what its users write for a task that
    # writes rows: an async engine made at start-up (the generated worker's pool settings,
    # pre-ping included) and a session per task.
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
    from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def open_pool(state: TaskiqState) -> None:
        state.engine = create_async_engine(
            os.environ["BENCH_DB_POOLED_URL"], pool_size=10, max_overflow=5, pool_pre_ping=True
        )
        state.sessions = async_sessionmaker(state.engine, class_=AsyncSession)

    @broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
    async def close_pool(state: TaskiqState) -> None:
        await state.engine.dispose()

    _INJECTED = TaskiqDepends()

    @broker.task(task_name="bench:write")
    async def write(
        sent_at: float, context: Context = _INJECTED, state: TaskiqState = _INJECTED
    ) -> None:
        from bench_rows import NOTE_INSERT

        async with state.sessions() as session:
            await session.execute(
                NOTE_INSERT, {"task_id": context.message.task_id, "title": "bench"}
            )
            await session.commit()
        probe.hit(sent_at)
