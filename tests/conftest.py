"""Session-wide real infrastructure and per-test isolation (own database, own topics)."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

from tests.faults.outages import GatedBroker
from tests.support.infra import fresh_database, session_broker, session_postgres, unique_namespace

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

# Hypothesis's defaults, without its 200 ms deadline per example: that is a timing assertion
# (a loaded 2-core machine makes it fail), and performance is measured in benchmarks.
settings.register_profile("tierstream", deadline=None)
settings.load_profile("tierstream")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka-protocol broker for the whole session."""
    with session_broker() as servers:
        yield servers


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A real Postgres server for the whole session (DATABASE_URL or embedded)."""
    with session_postgres() as url:
        yield url


@pytest.fixture
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    async with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture
def topic_namespace() -> str:
    """A topic namespace no other test uses."""
    return unique_namespace()


@pytest.fixture
def base_env(kafka_bootstrap: str, database_url: str, topic_namespace: str) -> dict[str, str]:
    """Environment for a service under test: its own topics and database, short timeouts."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "TIERSTREAM_TOPIC_NAMESPACE": topic_namespace,
        "TIERSTREAM_PARTITIONS": "3",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_REQUEST_TIMEOUT_MS": "5000",
        "TIERSTREAM_API_KEYS": "test:test-key",
    }


@pytest.fixture
async def gated_broker() -> AsyncIterator[GatedBroker]:
    """A private broker behind a TCP gate a test may close (the session broker stays up)."""
    broker = await GatedBroker().start()
    try:
        yield broker
    finally:
        await broker.stop()
