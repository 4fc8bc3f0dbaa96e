"""A database remembers the topic namespace it serves (scorer 0009, actions 0007).

Two deployments pointed at one database by mistake (staging's services with prod's
DATABASE_URL, another TIERSTREAM_TOPIC_NAMESPACE) mixed without a word: staging's relay
published prod's pending changes to staging's topic, and its sweeper acted on prod's
customers. Now the first service to start records its namespace, and a service started
with another refuses in one line naming both and the ways out; the same namespace starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from shared.db import asyncpg_dsn
from shared.embedded import free_port
from shared.migrations import upgrade, upgrade_all
from shared.served_namespace import (
    OtherNamespace,
    move_statement,
    recorded_namespace,
    refuse_recorded_other,
    require_namespace,
)
from tests.support.infra import free_service_ports, unique_namespace
from tests.support.service_process import refused, service_env, started

SERVICES = ("scorer", "actions")


async def _recorded(database_url: str, service: str) -> str | None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await recorded_namespace(conn, service)
    finally:
        await conn.close()


async def _execute(database_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _the_refusal(output: str) -> str:
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    return line


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_on_a_database_that_served_another_namespace_refuses_to_start(
    service: str, base_env: dict[str, str], database_url: str, topic_namespace: str
) -> None:
    await upgrade_all(database_url)
    port = free_port()
    # The first start records its namespace; the same namespace starts again.
    for _ in range(2):
        await asyncio.to_thread(started, service, service_env(base_env, service, port), port)
        assert await _recorded(database_url, service) == topic_namespace
    other = unique_namespace()  # another deployment, given this one's DATABASE_URL
    env = service_env(base_env, service, free_port(), TIERSTREAM_TOPIC_NAMESPACE=other)
    code, output = await refused(service, env)
    assert code == 1, output
    line = _the_refusal(output)
    assert "cannot start: the database serves another topic namespace" in line
    assert (
        f"{service}: this database serves the topic namespace {topic_namespace!r}, and this"
        f" process's TIERSTREAM_TOPIC_NAMESPACE is {other!r}"
    ) in line
    assert f"or set TIERSTREAM_TOPIC_NAMESPACE={topic_namespace};" in line
    assert f"on purpose: UPDATE {service}.topic_namespace SET namespace = '{other}'" in line
    assert await _recorded(database_url, service) == topic_namespace  # untouched
    # Moved on purpose, with the statement the refusal names: the other namespace starts.
    await _execute(database_url, move_statement(service, other))
    port = free_port()
    env = service_env(base_env, service, port, TIERSTREAM_TOPIC_NAMESPACE=other)
    await asyncio.to_thread(started, service, env, port)


async def test_actions_migrating_itself_refuses_another_namespace_in_the_same_line(
    base_env: dict[str, str], database_url: str, topic_namespace: str
) -> None:
    # Checked before it migrates, too: refused only after, it would have moved the other
    # deployment's schema to its own release first.
    await upgrade_all(database_url)
    await _execute(database_url, "INSERT INTO actions.topic_namespace VALUES (true, 'prod')")
    env = service_env(base_env, "actions", free_port(), ACTIONS_MIGRATE="true")
    code, output = await refused("actions", env)
    assert code == 1, output
    line = _the_refusal(output)
    assert "the database serves another topic namespace" in line
    assert (
        "actions: this database serves the topic namespace 'prod', and this process's"
        f" TIERSTREAM_TOPIC_NAMESPACE is {topic_namespace!r}"
    ) in line
    assert await _recorded(database_url, "actions") == "prod"


@pytest.mark.parametrize("service", SERVICES)
async def test_the_first_claim_records_and_a_later_one_of_another_namespace_is_refused(
    service: str, database_url: str
) -> None:
    await upgrade_all(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await recorded_namespace(conn, service) is None  # a new database serves none
        await require_namespace(conn, service, "prod")
        await require_namespace(conn, service, "prod")
        with pytest.raises(OtherNamespace, match="serves the topic namespace 'prod'"):
            await require_namespace(conn, service, "staging")
        assert await recorded_namespace(conn, service) == "prod"
        other = "scorer" if service == "actions" else "actions"
        assert await recorded_namespace(conn, other) is None  # each schema its own
    finally:
        await conn.close()


async def test_two_services_claiming_at_once_record_one_namespace(database_url: str) -> None:
    await upgrade_all(database_url)
    dsn = asyncpg_dsn(database_url)
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    try:
        claims = [f"n{i}" for i in range(8)]
        outcomes = await asyncio.gather(
            *(require_namespace(pool, "scorer", n) for n in claims), return_exceptions=True
        )
        won = [n for n, outcome in zip(claims, outcomes, strict=True) if outcome is None]
        assert len(won) == 1, outcomes
        assert all(isinstance(o, OtherNamespace) for o in outcomes if o is not None), outcomes
        assert await recorded_namespace(pool, "scorer") == won[0]
    finally:
        await pool.close()


async def test_a_schema_from_before_the_record_serves_no_namespace(database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await recorded_namespace(conn, "scorer") is None  # never migrated
    finally:
        await conn.close()
    await refuse_recorded_other(database_url, "anything")


def _offsets(service: str, *topics: str) -> str:
    rows = ", ".join(f"('g', '{topic}', 0, 1)" for topic in topics)
    return (
        f"INSERT INTO {service}.consumer_offset (group_id, topic, partition, next_offset)"
        f" VALUES {rows}"
    )


@pytest.mark.parametrize(
    ("service", "topics", "recorded"),
    [
        ("scorer", ["prod.purchases.v1", "prod.logins.v1", "prod.support.v1"], "prod"),
        ("actions", ["prod.eu.tier-changed.v1", "prod.eu.purchases.v1"], "prod.eu"),
        ("scorer", ["prod.purchases.v1", "staging.purchases.v1"], None),  # a mix: no guess
        ("actions", ["prod.dead-letters"], None),  # no topic of ours
        ("scorer", [], None),  # a new database
    ],
)
async def test_the_migration_records_the_one_namespace_the_stored_offsets_name(
    service: str, topics: list[str], recorded: str | None, database_url: str
) -> None:
    # A database that served a namespace before this release: its offsets name it, so the
    # first process of this release is checked against it rather than recording its own.
    before = {"scorer": "0008", "actions": "0006"}[service]  # the revisions before the record
    await asyncio.to_thread(upgrade, database_url, service, before)
    if topics:
        await _execute(database_url, _offsets(service, *topics))
    await asyncio.to_thread(upgrade, database_url, service)
    assert await _recorded(database_url, service) == recorded
    if recorded is not None:
        with pytest.raises(OtherNamespace):
            await refuse_recorded_other(database_url, "staging", services=(service,))


async def test_run_refuses_a_database_of_another_namespace_before_starting_anything(
    database_url: str, kafka_bootstrap: str
) -> None:
    # Its services would each exit and be restarted by its supervisor, without end.
    await upgrade_all(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await require_namespace(conn, "actions", "prod")
    finally:
        await conn.close()
    other = unique_namespace()
    env = {**os.environ, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "TIERSTREAM_TOPIC_NAMESPACE": other, "COLUMNS": "300",
           **free_service_ports()}  # fmt: skip
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "run", "--no-demo", env=env, stderr=subprocess.PIPE
    )  # its own process: `run` installs signal handlers, which only a main thread may
    output = (await run.communicate())[1].decode()
    assert run.returncode == 1, output
    line = _the_refusal(output)
    assert line.startswith("cannot start: actions: this database serves the topic namespace")
    assert f"'prod', and this process's TIERSTREAM_TOPIC_NAMESPACE is {other!r}" in line
    assert await _recorded(database_url, "scorer") is None  # no service started
