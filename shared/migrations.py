"""Alembic, driven from code: each service owns its tables in its own Postgres schema
(`scorer`, `actions`) with its own migration history in `services/<name>/migrations`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from shared.db import async_url, make_engine

SERVICES_WITH_TABLES = ("scorer", "actions")
_SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


def alembic_config(database_url: str, service: str) -> Config:
    if service not in SERVICES_WITH_TABLES:
        raise ValueError(f"unknown service {service!r}; expected one of {SERVICES_WITH_TABLES}")
    cfg = Config()
    cfg.set_main_option("script_location", str(_SERVICES_DIR / service / "migrations"))
    cfg.set_main_option("sqlalchemy.url", async_url(database_url).replace("%", "%%"))
    cfg.attributes["schema"] = service
    return cfg


def upgrade(database_url: str, service: str, revision: str = "head") -> None:
    """Apply one service's migrations (blocking; call from a thread inside an event loop)."""
    command.upgrade(alembic_config(database_url, service), revision)


async def upgrade_all(database_url: str) -> None:
    """Apply every service's migrations."""
    for service in SERVICES_WITH_TABLES:
        await asyncio.to_thread(upgrade, database_url, service)


def run_env(context: Any) -> None:
    """Body of each service's `migrations/env.py` (online mode, asyncpg)."""
    cfg = context.config
    schema: str = cfg.attributes["schema"]

    def do_run(connection: Connection) -> None:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            version_table_schema=schema,
            include_schemas=True,
            version_table=f"alembic_version_{schema}",
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = make_engine(
            cfg.get_main_option("sqlalchemy.url"),
            pool_size=1,
            application_name="tierstream-migrate",
        )
        try:
            async with engine.begin() as conn:
                await conn.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(run())
