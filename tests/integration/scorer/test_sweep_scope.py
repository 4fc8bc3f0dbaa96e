"""Time sweeps hold the customers of a partition that another member of the group has not
read yet (migration 0008, shared/partition_scope.py), and take them once it is read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from shared.clock import FixedClock
from shared.domain.rules import default_rules_path, load_rules
from shared.fenced_consumer import PartitionLag, group_generation
from shared.group_progress import read_progress, report_progress
from shared.kafka_batches import KeyPartitioner
from shared.topics import Topics
from tests.integration.scorer.support import (
    connect,
    customer_rows,
    folded,
    login,
    logins_through_an_outage,
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


async def test_new_rules_after_an_outage_wait_for_the_backlog_before_reclassifying(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
    tmp_path: Path,
) -> None:
    # Down for 60 days while the customer kept logging in, then started with a new rules
    # file: re-classified at once from its stored state, it would look silent for 61 days
    # (inactive, at_risk; cause rule_change), be acted on, then come back.
    await logins_through_an_outage(base_env, scorer_db, kafka_bootstrap, topic_namespace, clock)
    new_rules = tmp_path / "rules.yaml"
    new_rules.write_text(
        default_rules_path().read_text().replace("description: ", "description: revised ", 1)
    )
    settings = scorer_settings(base_env, rules_file=new_rules)
    async with running_scorer(settings, clock):
        await wait_until(lambda: folded(scorer_db, "back", events=12))
        await wait_until(lambda: _classified_under(scorer_db, load_rules(new_rules).version))
    async with connect(scorer_db) as conn:
        downgrades = await conn.fetch(
            "SELECT dimension, to_class FROM scorer.tier_change"
            " WHERE cause IN ('rule_change', 'time') AND customer_id = 'back'"
        )
    assert downgrades == []
    row = (await customer_rows(scorer_db))["back"]
    assert (row["activity_level"], row["lifecycle_stage"]) == ("active", "lead")


async def _classified_under(database_url: str, version: str) -> bool:
    async with connect(database_url) as conn:
        return bool(await conn.fetchval(
            "SELECT bool_and(rules_version = $1) FROM scorer.customer", version
        ))  # fmt: skip


async def test_a_stale_progress_record_of_a_later_generation_is_replaced(scorer_db: str) -> None:
    # Generations start again when the group is created again (a new broker, the group
    # deleted): the old, higher ones held every partition until the new group climbed past.
    async with connect(scorer_db) as conn:
        await conn.execute(
            "INSERT INTO scorer.partition_progress"
            " (group_id, topic, partition, generation, behind, heard_at)"
            " VALUES ('g', 't', 0, 7, 0, now() - interval '1 hour'),"
            "        ('g', 't', 1, 7, 0, now())"
        )
        lags = [PartitionLag("t", 0, 3, 0.0), PartitionLag("t", 1, 3, 0.0)]
        await report_progress(conn, "scorer", "g", 1, lags, max_age_s=60)
        rows = await read_progress(conn, "scorer", "g", max_age_s=60)
    assert sorted((r.partition, r.generation, r.behind, r.fresh) for r in rows) == [
        (0, 1, 3, True),  # replaced
        (1, 7, 0, True),  # fresh and later: another member's, this one is a zombie
    ]
