"""The actions service's Postgres pool (raw asyncpg: bulk statements) and its migrations."""

from __future__ import annotations

import asyncio
import json
from typing import TypeAlias

import asyncpg

from shared.db import asyncpg_dsn
from shared.migrations import upgrade

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
_MIGRATION_LOCK = 0x7469_6572_6163  # any constant shared by every actions process


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(database_url: str, *, size: int, application_name: str) -> Pool:
    """A pool of raw asyncpg connections (jsonb as Python objects), made lazily."""
    pool: Pool = await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=0,
        max_size=size,
        command_timeout=60,
        timeout=10,
        max_inactive_connection_lifetime=300,
        init=_init_connection,
        server_settings={"application_name": application_name},
    )
    return pool


async def database_ready(pool: Pool, *, within: float = 2.0) -> bool:
    """True when a trivial query answers within `within` seconds."""
    try:
        async with pool.acquire(timeout=within) as conn:
            await conn.fetchval("SELECT 1", timeout=within)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True


async def migrate(database_url: str) -> None:
    """Apply the actions migrations; an advisory lock serialises processes starting together."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await asyncio.to_thread(upgrade, database_url, "actions")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()


def row_count(status: str) -> int:
    """Rows affected, from a command tag such as `UPDATE 3` or `INSERT 0 3`."""
    return int(status.rsplit(" ", 1)[-1])
