"""Engine and session factories (SQLAlchemy 2 async)."""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

# What code that opens its own sessions takes: an async_sessionmaker, or a worker's
# LazySessionFactory (db/lazy.py).
SessionFactory = Callable[[], AsyncSession]


def create_engine(database_url: str, *, null_pool: bool = False) -> AsyncEngine:
    """Create an engine; workers use NullPool so no connection outlives a task."""
    if null_pool:
        return create_async_engine(database_url, poolclass=NullPool)
    return create_async_engine(database_url, pool_pre_ping=True)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
