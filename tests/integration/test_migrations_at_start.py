"""The scorer and actions at their start: a schema behind this release's latest revision is
refused in one line naming both revisions (the scorer started, said ready, and its sweeper,
progress and rule-change loops failed forever on the missing `partition_progress`); at the
latest, or at a newer release's revision (an older process during a rolling upgrade), the
service starts. Each service runs as its own process, as a deployment starts it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import asyncpg_dsn
from shared.embedded import free_port
from shared.migrations import (
    SchemaBehind,
    current_revision,
    require_migrated,
    revisions,
    upgrade,
)
from tests.support.service_process import refused, service_env, started

SERVICES = ("scorer", "actions")


def latest(service: str) -> str:
    return revisions(service)[-1]


def one_before(service: str) -> str:
    return revisions(service)[-2]


async def _migrate(database_url: str, scorer: str, actions: str) -> None:
    await asyncio.to_thread(upgrade, database_url, "scorer", scorer)
    await asyncio.to_thread(upgrade, database_url, "actions", actions)


async def _stamp(database_url: str, service: str, revision: str) -> None:
    """The version table says `revision` (a newer release's: this one has no such file)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(f"UPDATE {service}.alembic_version_{service} SET version_num = $1",
                           revision)  # fmt: skip
    finally:
        await conn.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_whose_schema_is_one_revision_behind_refuses_to_start_in_one_line(
    service: str, base_env: dict[str, str], database_url: str
) -> None:
    # The other schema at its latest: only this service's is behind.
    behind = {s: one_before(s) if s == service else latest(s) for s in SERVICES}
    await _migrate(database_url, behind["scorer"], behind["actions"])
    code, output = await refused(service, service_env(base_env, service, free_port()))
    assert code == 1, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert "the database is not migrated: run `tierstream migrate`" in line
    assert f"{service}: the schema is at revision {one_before(service)};" in line
    assert f"this release's latest is {latest(service)}" in line
    assert await current_revision(database_url, service) == one_before(service)  # untouched


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_whose_schema_is_at_the_latest_revision_starts(
    service: str, base_env: dict[str, str], database_url: str
) -> None:
    await _migrate(database_url, latest("scorer"), latest("actions"))
    port = free_port()
    await asyncio.to_thread(started, service, service_env(base_env, service, port), port)


async def test_actions_migrating_at_its_start_passes_the_check(
    base_env: dict[str, str], database_url: str
) -> None:
    await _migrate(database_url, latest("scorer"), one_before("actions"))
    port = free_port()
    env = service_env(base_env, "actions", port, ACTIONS_MIGRATE="true")
    await asyncio.to_thread(started, "actions", env, port)
    assert await current_revision(database_url, "actions") == latest("actions")


@pytest.mark.parametrize("service", SERVICES)
async def test_an_older_process_starts_on_a_newer_releases_schema(
    service: str, base_env: dict[str, str], database_url: str
) -> None:
    # A rolling upgrade whose migrations may run beside the old version (CHANGELOG.md): the
    # old processes restart on the migrated schema as they did before the check.
    await _migrate(database_url, latest("scorer"), latest("actions"))
    await _stamp(database_url, service, "0099")
    port = free_port()
    await asyncio.to_thread(started, service, service_env(base_env, service, port), port)


@pytest.mark.parametrize("service", SERVICES)
async def test_the_check_names_a_schema_never_migrated_and_one_behind(
    service: str, database_url: str
) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        with pytest.raises(SchemaBehind) as never:
            await require_migrated(conn, service)
        assert str(never.value) == (
            f"{service}: the schema has no revision applied; this release's latest is"
            f" {latest(service)}"
        )
        await asyncio.to_thread(upgrade, database_url, service, one_before(service))
        with pytest.raises(SchemaBehind, match=f"at revision {one_before(service)};"):
            await require_migrated(conn, service)
        await asyncio.to_thread(upgrade, database_url, service)
        await require_migrated(conn, service)
    finally:
        await conn.close()
