"""The actions service's Postgres pool (raw asyncpg: bulk statements) and its migrations."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from shared.migrations import upgrade
from shared.pg import Connection, Pool, RequestDatabase, database_ready, row_count
from shared.pg import create_pool as create_raw_pool

__all__ = [
    "Connection", "Pool", "RequestDatabase", "create_api_pool", "create_pool", "database_ready",
    "migrate", "row_count",
]  # fmt: skip


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    database_url: str, *, size: int, application_name: str, within: float | None = None
) -> Pool:
    """The actions pool: jsonb columns arrive as Python objects. `within`: an HTTP API's
    pool (shared/pg.py)."""
    return await create_raw_pool(
        database_url, size=size, application_name=application_name, init=_init_connection,
        within=within,
    )  # fmt: skip


async def create_api_pool(database_url: str, *, size: int, within: float) -> Pool:
    """The HTTP API's own pool (shared/pg.py RequestDatabase)."""
    return await create_pool(
        database_url, size=size, application_name="tierstream-actions-api", within=within
    )


async def migrate(database_url: str) -> None:
    """Apply the actions migrations (shared.migrations serialises processes starting
    together, and `tierstream migrate` with them)."""
    await asyncio.to_thread(upgrade, database_url, "actions")
