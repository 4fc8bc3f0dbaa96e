"""The async SQLAlchemy engine (asyncpg) the migrations run on, built on demand, never at import."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def asyncpg_dsn(database_url: str) -> str:
    """A plain libpq-style DSN for raw asyncpg connections (bulk paths)."""
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    application_name: str = "tierstream",
    command_timeout: float | None = 60,
) -> AsyncEngine:
    """An engine whose connections are checked before use (survives a Postgres restart);
    a statement is given up after `command_timeout` seconds (None: never).

    asyncpg reads the URL itself, as the services' pools do: through SQLAlchemy's URL, its
    query (`sslmode=require`, libpq's usual parameters) became keyword arguments that
    `asyncpg.connect` does not take, and the migrations failed on URLs the services accept."""
    dsn = asyncpg_dsn(database_url)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            dsn, timeout=10, command_timeout=command_timeout,
            server_settings={"application_name": application_name},
        )  # fmt: skip

    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=connect,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )
