"""`scorer.kafka_partition` (migration 0008) places a key where ingest's producer does
(shared.kafka_batches.KeyPartitioner, aiokafka's default partitioner: murmur2 of the key's
UTF-8 bytes)."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.kafka_batches import KeyPartitioner
from tests.integration.scorer.support import connect

# Postgres text holds no NUL; any other character, of one to four UTF-8 bytes, may be a key.
KEYS = st.lists(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40),
    min_size=1,
    max_size=100,
)


def _kafka(key: str, partitions: int) -> int:
    return KeyPartitioner().partition(key.encode(), range(partitions))


async def _postgres(database_url: str, keys: list[str], partitions: int) -> list[int]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT scorer.kafka_partition(k, $2) AS p FROM unnest($1::text[]) WITH ORDINALITY"
            " AS u(k, n) ORDER BY n",
            keys,
            partitions,
        )
    return [row["p"] for row in rows]


def test_kafka_partition_places_typical_customer_ids_as_the_producer_does(scorer_db: str) -> None:
    keys = [f"c{i}" for i in range(2000)] + [f"customer-{i:08d}" for i in range(0, 10**8, 997_001)]
    for partitions in (1, 3, 12, 64):
        expected = [_kafka(k, partitions) for k in keys]
        assert asyncio.run(_postgres(scorer_db, keys, partitions)) == expected
    assert len(set(expected)) == 64  # the keys do spread: the check compares real placements


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=KEYS, partitions=st.integers(min_value=1, max_value=10_000))
def test_kafka_partition_equals_murmur2_for_any_key(
    scorer_db: str, keys: list[str], partitions: int
) -> None:
    expected = [_kafka(k, partitions) for k in keys]
    assert asyncio.run(_postgres(scorer_db, keys, partitions)) == expected
