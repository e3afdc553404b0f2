"""Engine and session factories (SQLAlchemy 2 async)."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)

# How long an interrupted session's cleanup waits to cancel its statement on the server.
CANCEL_TIMEOUT_SECONDS = 5.0

# What code that opens its own sessions takes: an async_sessionmaker, or a worker's
# LazySessionFactory (db/lazy.py).
SessionFactory = Callable[[], AsyncSession]


def create_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    null_pool: bool = False,
) -> AsyncEngine:
    """An engine with a bounded pool (or none: NullPool opens a connection per session).

    pool_pre_ping checks a pooled connection before handing it out, so one that a database
    restart broke is replaced instead of failing the next request or task.
    """
    if null_pool:
        engine = create_async_engine(database_url, poolclass=NullPool)
    elif make_url(database_url).get_backend_name() == "sqlite":
        # SQLite needs no connection budget (and its in-memory pool takes no sizes).
        engine = create_async_engine(database_url, pool_pre_ping=True)
    else:
        engine = create_async_engine(
            database_url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
        )
    if engine.dialect.name == "postgresql":
        event.listen(engine.sync_engine.pool, "invalidate", _cancel_interrupted_statement(engine))
    return engine


class PoolSafeSession(AsyncSession):
    """A session that throws its connection away when it is left by a cancel or a timeout.

    A task cancelled (DELETE /tasks/{id}) or timed out leaves its connection in an unknown
    state (a statement half sent, a reply unread, a transaction open): the connection is
    closed and dropped from the pool instead of being handed to the next task.
    """

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if _interrupted(value):
            await _run_to_completion(self.invalidate())
            return
        await super().__aexit__(type_, value, traceback)


_cancels: set[asyncio.Task[None]] = set()


def _cancel_interrupted_statement(engine: AsyncEngine) -> Callable[..., None]:
    """A pool listener: a connection dropped because its statement was interrupted gets
    that statement cancelled on the server, which would otherwise run it to the end (it
    notices a closed connection only when it replies)."""

    def on_invalidate(dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
        get_pid = getattr(
            getattr(dbapi_connection, "driver_connection", None), "get_server_pid", None
        )
        # Not after a disconnect: a restarted server may have given that pid to someone else.
        if get_pid is None or not _interrupted(exception):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # invalidated outside an event loop: nothing runs there
            return
        task = loop.create_task(_cancel_backend(engine, get_pid()))
        _cancels.add(task)
        task.add_done_callback(_cancels.discard)

    return on_invalidate


async def _cancel_backend(engine: AsyncEngine, pid: int) -> None:
    try:
        async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
    except (SQLAlchemyError, OSError, TimeoutError):
        logger.warning("Could not cancel the statement of an interrupted session", exc_info=True)


def _interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` is, or was raised while handling, a cancel or a timeout: a cancelled task
    raises TaskCancelledError from the CancelledError, taskiq's timeout a TimeoutError."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, asyncio.CancelledError | TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _run_to_completion(cleanup: Awaitable[None]) -> None:
    # A cancel scope (taskiq's timeout) cancels every await inside it again: the cleanup runs
    # in a task of its own and is waited for to the end, then the cancel goes on.
    task = asyncio.ensure_future(cleanup)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    task.result()
    if cancelled is not None:
        raise cancelled


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=PoolSafeSession, expire_on_commit=False)
