"""Raw asyncpg plumbing shared by the scorer and actions hot paths (bulk statements)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
from asyncpg.connect_utils import SessionAttribute
from asyncpg.pool import PoolAcquireContext

from shared.db import asyncpg_dsn

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
# What a read statement runs on: a held connection, or the pool (which lends one per call).
Queryable: TypeAlias = "Pool | Connection"
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
    # Out of connection slots (53300, the server's or the role's limit), disk or memory.
    asyncpg.InsufficientResourcesError,
    # A statement cancelled by the server (statement_timeout) or an administrator.
    asyncpg.QueryCanceledError,
    # The server is a read-only standby (a failover in progress): refused at connect
    # (`create_pool`), or a write on a connection opened before the switch.
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.ReadOnlySQLTransactionError,
)
_READY_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError)


async def create_pool(
    database_url: str,
    *,
    size: int,
    application_name: str,
    init: ConnectionInit | None = None,
    server_settings: dict[str, str] | None = None,
    within: float | None = None,
) -> Pool:
    """A pool of raw asyncpg connections, made lazily and on demand (survives restarts).

    Opening a connection gives up after 10 s and a statement after 60 s (a batch of the
    consuming work may take long), or both after `within` s for an HTTP API's pool."""
    dsn = asyncpg_dsn(database_url)
    # A read-only server (a standby a failover left the address on) is refused at connect,
    # as an outage, not taken: every batch failed on it while /readyz said ready.
    writable = None if "target_session_attrs" in dsn else SessionAttribute.read_write
    pool: Pool = await asyncpg.create_pool(
        dsn,
        target_session_attrs=writable,
        min_size=0,
        max_size=size,
        command_timeout=within or 60,
        timeout=within or 10,
        max_inactive_connection_lifetime=300,
        init=init,
        server_settings={"application_name": application_name, **(server_settings or {})},
    )
    return pool


@dataclass(frozen=True)
class RequestDatabase:
    """An HTTP API's database: a pool of its own, made with `within`, and a connection per
    request. Waiting for the connection, each statement and handing it back each take at most
    `within` s, and a timeout is a TimeoutError, which the apps answer as an outage (503)."""

    pool: Pool
    within: float

    def connection(self) -> PoolAcquireContext[asyncpg.Record]:
        # Release's reset defaults to the acquire timeout: a connection that stopped
        # answering is terminated after `within`, not waited for.
        return self.pool.acquire(timeout=self.within)


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
