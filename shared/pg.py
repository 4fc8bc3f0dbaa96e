"""Raw asyncpg plumbing shared by the scorer and actions hot paths (bulk statements)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

import asyncpg

from shared.db import asyncpg_dsn

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
ConnectionInit = Callable[["asyncpg.Connection[asyncpg.Record]"], Coroutine[Any, Any, None]]

# Errors that mean "Postgres is away or the transaction lost a race": retry, do not crash.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.LockNotAvailableError,
)
_READY_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError)


async def create_pool(
    database_url: str,
    *,
    size: int,
    application_name: str,
    init: ConnectionInit | None = None,
    server_settings: dict[str, str] | None = None,
) -> Pool:
    """A pool of raw asyncpg connections, made lazily and on demand (survives restarts)."""
    pool: Pool = await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=0,
        max_size=size,
        command_timeout=60,
        timeout=10,
        max_inactive_connection_lifetime=300,
        init=init,
        server_settings={"application_name": application_name, **(server_settings or {})},
    )
    return pool


async def database_ready(pool: Pool, *, within: float = 2.0) -> bool:
    """True when a trivial query answers within `within` seconds."""
    try:
        async with pool.acquire(timeout=within) as conn:
            await conn.fetchval("SELECT 1", timeout=within)
    except _READY_ERRORS:
        return False
    return True


def row_count(status: str) -> int:
    """Rows affected, from a command tag such as `UPDATE 3` or `INSERT 0 3`."""
    return int(status.rsplit(" ", 1)[-1])
