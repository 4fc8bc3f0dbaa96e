"""Alembic, driven from code: each service owns its tables in its own Postgres schema
(`scorer`, `actions`) with its own migration history in `services/<name>/migrations`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

from shared.db import asyncpg_dsn, make_engine
from shared.logging import get_logger
from shared.pg import Queryable

log = get_logger(__name__)

SERVICES_WITH_TABLES = ("scorer", "actions")
_SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"
# Any constant shared by every migrator (`tierstream migrate`, actions at its start): each
# takes it for its whole transaction, so two at once never race on a schema or a revision.
MIGRATION_LOCK = 0x7469_6572_6163


class MigrationError(Exception):
    """A migration that cannot run: e.g. the database is at a revision this release lacks."""


def alembic_config(database_url: str, service: str) -> Config:
    if service not in SERVICES_WITH_TABLES:
        raise ValueError(f"unknown service {service!r}; expected one of {SERVICES_WITH_TABLES}")
    cfg = Config()
    cfg.set_main_option("script_location", str(_SERVICES_DIR / service / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["schema"] = service
    return cfg


def upgrade(database_url: str, service: str, revision: str = "head") -> None:
    """Apply one service's migrations (blocking; call from a thread inside an event loop)."""
    with _explained(service):
        command.upgrade(alembic_config(database_url, service), revision)


@functools.cache
def revisions(service: str) -> tuple[str, ...]:
    """The revisions this release ships for `service`, oldest first (the last: its head)."""
    scripts = ScriptDirectory.from_config(alembic_config("", service))
    return tuple(s.revision for s in scripts.walk_revisions())[::-1]


class UnknownRevision(MigrationError):
    """A revision asked for that this release does not have (a usage error)."""


class DowngradeRefused(MigrationError):
    """A move back (it drops tables, columns and their data) that was not confirmed."""


def move_to(
    database_url: str, service: str, revision: str, *, confirm_back: Callable[[str], bool]
) -> None:
    """Move one service's schema (and its data) to `revision`, back or forward ("base": no
    tables, "head": this release's latest). A move back runs only when `confirm_back(the
    current revision)` says yes (DowngradeRefused otherwise): it drops what later revisions
    added, data included."""
    config = alembic_config(database_url, service)
    order = revisions(service)
    if revision not in {"base", "head", *order}:  # a typo, not a newer release's work
        raise UnknownRevision(
            f"{service}: no revision {revision!r}; this release has base, "
            + ", ".join(order)
            + ", head"
        )
    current = asyncio.run(current_revision(database_url, service))
    rank: dict[str | None, int] = {"base": -1, None: -1, "head": len(order) - 1}
    rank.update((r, i) for i, r in enumerate(order))
    if current not in rank:
        raise MigrationError(f"{service}: the database is at revision {current!r}{_NEWER}")
    back = rank[revision] < rank[current]
    if back and not confirm_back(str(current)):
        raise DowngradeRefused(
            f"{service}: moving back from {current} to {revision} drops what the later"
            " revisions added, data included; add --yes to do it"
        )
    with _explained(service):
        if back:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


async def current_revision(database_url: str, service: str) -> str | None:
    """The service's applied revision (None: no version table, nothing applied)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        return await applied_revision(conn, service)
    finally:
        await conn.close()


async def applied_revision(db: Queryable, service: str) -> str | None:
    """`current_revision` on a connection or pool the caller holds."""
    table = f"{service}.alembic_version_{service}"
    if not await db.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return None
    found: str | None = await db.fetchval(f"SELECT version_num FROM {table}")
    return found


class SchemaBehind(Exception):
    """A service's schema at a revision older than this release's latest, or at none: what
    the later revisions add is missing, and the queries that use it would fail."""


async def require_migrated(db: Queryable, service: str) -> None:
    """What a service checks at its start (scorer, actions): SchemaBehind when its schema is
    not at this release's latest revision (the shared/service.py start check turns it into
    one line and exit 1). A revision this release does not know is a newer release's: this
    process is the older one of a rolling upgrade and starts as before (CHANGELOG.md says,
    for each migration, whether an older process may run beside it)."""
    current, known = await applied_revision(db, service), revisions(service)
    if current == known[-1]:
        return
    if current is None or current in known:
        at = "has no revision applied" if current is None else f"is at revision {current}"
        raise SchemaBehind(f"{service}: the schema {at}; this release's latest is {known[-1]}")
    log.info(
        "the schema is at a newer release's revision", service=service, revision=current,
        latest=known[-1],
    )  # fmt: skip


@contextlib.contextmanager
def _explained(service: str) -> Iterator[None]:
    try:
        yield
    except CommandError as exc:
        # "Can't locate revision identified by '0009'": the database's, a newer release's.
        hint = _NEWER if "Can't locate revision" in str(exc) else ""
        raise MigrationError(f"{service}: {exc}{hint}") from exc


_NEWER = (
    ". A revision this release does not know was applied by a newer release: run that"
    " release, or move the schema back with its `tierstream migrate --service ... --to"
    " REVISION --yes` first"
)


async def upgrade_all(database_url: str) -> None:
    """Apply every service's migrations."""
    for service in SERVICES_WITH_TABLES:
        await asyncio.to_thread(upgrade, database_url, service)


def run_env(context: Any) -> None:
    """Body of each service's `migrations/env.py` (online mode, asyncpg)."""
    cfg = context.config
    schema: str = cfg.attributes["schema"]

    def do_run(connection: Connection) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
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
        # No statement timeout: rewriting a large table, or waiting for a lock a running
        # service holds, may take longer than the services' 60 s, and a timeout rolls the
        # whole upgrade back (one transaction), so every retry would fail the same way.
        engine = make_engine(
            cfg.get_main_option("sqlalchemy.url"),
            pool_size=1,
            application_name="tierstream-migrate",
            command_timeout=None,
        )
        try:
            async with engine.begin() as conn:
                await conn.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(run())
