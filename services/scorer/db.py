"""The scorer's Postgres connection pool (raw asyncpg: the hot path is bulk statements)."""

from __future__ import annotations

from shared.pg import (
    TRANSIENT_DB_ERRORS,
    Connection,
    Pool,
    Queryable,
    RequestDatabase,
    database_ready,
)  # fmt: skip
from shared.pg import create_pool as create_raw_pool

__all__ = [
    "TRANSIENT_DB_ERRORS", "Connection", "Pool", "Queryable", "RequestDatabase", "create_pool",
    "database_ready",
]  # fmt: skip


async def create_pool(
    database_url: str, *, size: int, application_name: str, within: float | None = None
) -> Pool:
    """The scorer's pool: a batch joins ~10k customer rows with its arrays, and enough
    work_mem keeps that join off disk. `within`: an HTTP API's pool (shared/pg.py)."""
    return await create_raw_pool(
        database_url,
        size=size,
        application_name=application_name,
        server_settings={"work_mem": "32MB"},
        within=within,
    )
