"""Which topic namespace a database serves (`TIERSTREAM_TOPIC_NAMESPACE`), so that two
deployments pointed at one database by mistake do not mix.

Each service schema holds one row, `<schema>.topic_namespace(namespace)` (scorer migration
0009, actions 0007). The first process of a service to start on the database records its
namespace there (the migration records the one the stored offsets name, on a database that
served one already); a process started with another namespace refuses to start, naming
both (shared/service.py: one line, exit 1). Without it, a staging scorer given prod's
DATABASE_URL relayed prod's tier changes to staging's topic, and its sweeper re-classified
prod's customers, with nothing visible: offsets are stored per topic name.

`tierstream migrate` records nothing: it is given no namespace (a shell or a Job may not
carry the services' one), and tests and benchmarks migrate before they choose theirs.
Moving a database to another namespace on purpose is one UPDATE per schema, which the
refusal names (docs/OPERATIONS.md, Topic namespace)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.db import asyncpg_dsn
from shared.logging import get_logger
from shared.pg import Queryable

log = get_logger(__name__)

SERVICES = ("scorer", "actions")  # their schemas are interpolated into SQL: never input


class OtherNamespace(Exception):
    """The database serves another topic namespace than this process's."""


def _table(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")
    return f"{service}.topic_namespace"


def move_statement(service: str, namespace: str) -> str:
    """The SQL that makes `service`'s schema serve `namespace` (a move on purpose)."""
    literal = "'" + namespace.replace("'", "''") + "'"
    return f"UPDATE {_table(service)} SET namespace = {literal}"


async def recorded_namespace(db: Queryable, service: str) -> str | None:
    """The namespace `service`'s schema serves; None: none recorded yet, or a schema from
    before the record (no table)."""
    table = _table(service)
    if not await db.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return None
    found: str | None = await db.fetchval(f"SELECT namespace FROM {table}")
    return found


def refuse_other(service: str, served: str | None, namespace: str) -> None:
    """OtherNamespace when the schema serves a namespace (`served`) that is not `namespace`."""
    if served is None or served == namespace:
        return
    raise OtherNamespace(
        f"{service}: this database serves the topic namespace {served!r}, and this process's"
        f" TIERSTREAM_TOPIC_NAMESPACE is {namespace!r}: point DATABASE_URL at the database"
        f" of {namespace!r}, or set TIERSTREAM_TOPIC_NAMESPACE={served}; to move this"
        f" database to {namespace!r} on purpose: {move_statement(service, namespace)}"
        " (docs/OPERATIONS.md, Topic namespace)"
    )


async def refuse_recorded_other(
    database_url: str, namespace: str, services: Sequence[str] = SERVICES
) -> None:
    """OtherNamespace when a schema of `services` already serves another namespace, read on
    a connection of its own; records nothing (`require_namespace` does, at a service's start).
    Actions with `ACTIONS_MIGRATE=true` checks before it migrates (refused only after, it
    would have moved the other deployment's schema to this release first), and `tierstream
    run` before it starts its services (they would exit and be restarted, again and again)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        for service in services:
            refuse_other(service, await recorded_namespace(conn, service), namespace)
    finally:
        await conn.close()


async def require_namespace(db: Queryable, service: str, namespace: str) -> None:
    """What a service checks at its start (scorer, actions), after `require_migrated`: the
    schema serves `namespace`, recorded now if it serves none yet; OtherNamespace when it
    serves another (the shared/service.py start check turns it into one line and exit 1)."""
    table = _table(service)
    # Two statements: in one, the SELECT's snapshot would miss a row that a process starting
    # at the same moment committed while the INSERT waited for it.
    claimed = await db.fetchval(
        f"INSERT INTO {table} (namespace) VALUES ($1) ON CONFLICT DO NOTHING RETURNING namespace",
        namespace,
    )
    if claimed is not None:
        log.info("the database now serves this topic namespace", service=service,
                 namespace=namespace)  # fmt: skip
        return
    refuse_other(service, await db.fetchval(f"SELECT namespace FROM {table}"), namespace)
