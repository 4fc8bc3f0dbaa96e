"""`kafka_partition` (shared/progress_ddl.py; scorer migration 0008, actions 0003) places a
key where the producers do (shared.kafka_batches.KeyPartitioner, aiokafka's default
partitioner: murmur2 of the key's UTF-8 bytes)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.actions.db import migrate
from shared.kafka_batches import KeyPartitioner
from shared.migrations import upgrade
from tests.integration.scorer.support import connect

# Postgres text holds no NUL; any other character, of one to four UTF-8 bytes, may be a key.
KEYS = st.lists(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40),
    min_size=1,
    max_size=100,
)


def _kafka(key: str, partitions: int) -> int:
    return KeyPartitioner().partition(key.encode(), range(partitions))


@pytest.fixture
async def scorer_and_actions_db(database_url: str) -> str:
    """One fresh database with both services' migrations (each makes its own function)."""
    await asyncio.to_thread(upgrade, database_url, "scorer")
    await migrate(database_url)
    return database_url


async def _postgres(database_url: str, keys: list[str], partitions: int) -> list[int]:
    """Each key's partition by the scorer's function; the actions one must agree."""
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT scorer.kafka_partition(k, $2) AS p, actions.kafka_partition(k, $2) AS a"
            " FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n",
            keys,
            partitions,
        )
    assert [row["a"] for row in rows] == [row["p"] for row in rows]
    return [row["p"] for row in rows]


def test_kafka_partition_places_typical_customer_ids_as_the_producer_does(
    scorer_and_actions_db: str,
) -> None:
    keys = [f"c{i}" for i in range(2000)] + [f"customer-{i:08d}" for i in range(0, 10**8, 997_001)]
    for partitions in (1, 3, 12, 64):
        expected = [_kafka(k, partitions) for k in keys]
        assert asyncio.run(_postgres(scorer_and_actions_db, keys, partitions)) == expected
    assert len(set(expected)) == 64  # the keys do spread: the check compares real placements


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=KEYS, partitions=st.integers(min_value=1, max_value=10_000))
def test_kafka_partition_equals_murmur2_for_any_key(
    scorer_and_actions_db: str, keys: list[str], partitions: int
) -> None:
    expected = [_kafka(k, partitions) for k in keys]
    assert asyncio.run(_postgres(scorer_and_actions_db, keys, partitions)) == expected
