"""Real infrastructure for tests: a broker and a Postgres server per session,
a fresh database and topic namespace per test."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.db import asyncpg_dsn
from shared.embedded import EmbeddedKafka, EmbeddedPostgres


@contextmanager
def session_broker() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS when set, else an embedded tansu on a free port."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with EmbeddedKafka() as broker:
        yield broker.bootstrap_servers


@contextmanager
def session_postgres() -> Iterator[str]:
    """DATABASE_URL's server when set, else an embedded Postgres. Yields a server URL."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with EmbeddedPostgres() as pg:
        yield pg.url


def with_database(server_url: str, database: str) -> str:
    """The same server URL pointing at another database (keeps ?host=... query)."""
    from sqlalchemy.engine import make_url

    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A throw-away database on the server; dropped afterwards."""
    name = f"ts_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(with_database(server_url, "postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(with_database(server_url, "postgres")))
        try:
            await asyncio.wait_for(
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), 30
            )
        finally:
            await admin.close()


async def recreate_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete `topic` and create it again, empty: what a consumer whose stored offsets outlived
    the topic's log sees (a topic created again, or another cluster by the same names)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        await _until(lambda names: topic not in names, admin)
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        await _until(lambda names: topic in names, admin)
    finally:
        await admin.close()


async def _until(done: Callable[[list[str]], bool], admin: AIOKafkaAdminClient) -> None:
    deadline = time.monotonic() + 15
    while not done(await admin.list_topics()):
        if time.monotonic() > deadline:
            raise AssertionError("the topic was not deleted or created within 15 s")
        await asyncio.sleep(0.1)


def unique_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def free_service_ports() -> dict[str, str]:
    """`INGEST_PORT`, `SCORER_PORT`, `ACTIONS_PORT` set to free ports: a test of
    `tierstream run` must not depend on the defaults being free on the machine (a `make run`
    beside the suite held them, and `run` refused to start before what the test checks)."""
    from shared.embedded import free_port

    return {f"{service}_PORT": str(free_port()) for service in ("INGEST", "SCORER", "ACTIONS")}
