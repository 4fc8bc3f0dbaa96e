"""Time sweeps hold the customers of a partition that another member of the group has not
read yet (migration 0008, shared/partition_scope.py), and take them once it is read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from aiokafka import AIOKafkaConsumer

from shared.clock import FixedClock
from shared.fenced_consumer import group_generation
from shared.kafka_batches import KeyPartitioner
from shared.topics import Topics
from tests.integration.scorer.support import (
    connect,
    customer_rows,
    login,
    produce,
    running_scorer,
    scorer_settings,
    topic_router,
    wait_until,
)

CUSTOMERS = [f"held-{i}" for i in range(24)]


@contextlib.asynccontextmanager
async def _idle_member(
    bootstrap: str, group_id: str, topic: str
) -> AsyncIterator[AIOKafkaConsumer]:
    """A member of the scorer's group that takes partitions of `topic` and never reads them:
    a scorer process stuck behind (just restarted, or new in a scale-up)."""
    member = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
        session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )  # fmt: skip
    await member.start()
    try:
        yield member
    finally:
        await member.stop()


async def _reported_in(database_url: str, generation: int) -> bool:
    async with connect(database_url) as conn:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM scorer.partition_progress WHERE generation = $1", generation
        ))  # fmt: skip


async def _swept(database_url: str, customers: list[str]) -> set[str]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT customer_id FROM scorer.tier_change"
            " WHERE cause = 'time' AND customer_id = ANY($1)",
            customers,
        )
    return {row["customer_id"] for row in rows}


async def test_a_sweep_holds_the_customers_of_a_partition_another_member_has_not_read(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    topics = Topics(topic_namespace)
    settings = scorer_settings(base_env, sweep_interval_s=0.05)
    async with running_scorer(settings, clock):
        await produce(kafka_bootstrap, topic_router(topic_namespace),
                      [login(f"l-{c}", c, days_ago=1) for c in CUSTOMERS])  # fmt: skip

        async def folded() -> bool:
            return set(CUSTOMERS) <= (await customer_rows(scorer_db)).keys()

        await wait_until(folded)
        async with _idle_member(kafka_bootstrap, settings.group_id, topics.logins) as member:
            await wait_until(lambda: _assigned(member))
            generation = group_generation(member)
            assert generation is not None
            # The scorer rejoined in the same generation and reported its own partitions.
            await wait_until(lambda: _reported_in(scorer_db, generation))
            held = {tp.partition for tp in member.assignment()}
            partitions = len(member.partitions_for_topic(topics.logins) or ())
            theirs = [c for c in CUSTOMERS if _partition(c, partitions) in held]
            mine = [c for c in CUSTOMERS if c not in theirs]
            assert theirs and mine
            clock.advance(timedelta(days=60))  # every customer is due, silent for 61 days
            await wait_until(lambda: _all_swept(scorer_db, mine))
            # The sweep that took `mine` saw `theirs` due as well (same review time).
            assert await _swept(scorer_db, theirs) == set()
        # The member left: the scorer owns and reads every partition again.
        await wait_until(lambda: _all_swept(scorer_db, theirs), within=60)


async def _assigned(member: AIOKafkaConsumer) -> bool:
    return bool(member.assignment())


async def _all_swept(database_url: str, customers: list[str]) -> bool:
    return await _swept(database_url, customers) == set(customers)


def _partition(customer_id: str, partitions: int) -> int:
    return KeyPartitioner().partition(customer_id.encode(), range(partitions))
