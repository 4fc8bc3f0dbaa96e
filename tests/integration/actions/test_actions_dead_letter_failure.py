"""A dead-letter write that fails holds the actions consumer's partition: the stored offset
stays before the poison record and the tier changes behind it are not applied; once the
write goes through, the poison is in `<topic>.dlq` (at least once, docs/OPERATIONS.md) and
the changes behind it are applied.

The consumer reads the session broker; its producer (dead letters) writes to a private
broker through a `GatedBroker` (tests/faults/outages.py), so closing the gate takes the
broker away from the producer alone, as a DLQ write that cannot be acknowledged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.actions.consumer import ChangeConsumer
from services.actions.db import create_pool
from services.actions.effects import ChannelConfig
from services.actions.metrics import actions_metrics
from shared.clock import FixedClock
from shared.contracts import TIER_CHANGED_TYPE, TierChanged
from shared.domain.playbooks import default_playbooks_path, load_playbooks
from shared.kafka import (
    Headers,
    cloudevent_headers,
    ensure_topics,
    header,
    make_consumer,
    make_producer,
)
from shared.metrics import new_registry
from shared.topics import Topics
from tests.faults.outages import GatedBroker
from tests.integration.actions.support import actions_settings, fetch, tier_change
from tests.integration.scorer.support import read_topic, wait_until

# The producer gives a record up (KafkaTimeoutError) after this long without the broker.
REQUEST_TIMEOUT_MS = "2000"


@pytest.fixture
async def gated_broker() -> AsyncIterator[GatedBroker]:
    broker = await GatedBroker().start()
    try:
        yield broker
    finally:
        await broker.stop()


def _record(change: TierChanged) -> tuple[bytes, bytes, Headers]:
    """A tier change as the scorer's relay publishes it (keyed by customer, CloudEvents)."""
    headers = cloudevent_headers(ce_id=change.id, ce_source="tierstream/scorer",
                                 ce_type=TIER_CHANGED_TYPE, ce_time=change.emitted_at)  # fmt: skip
    return change.customer_id.encode(), change.to_json(), headers


async def _send(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, Headers]]
) -> list[int]:
    """Publish (key, value, headers) records in order, acknowledged; returns their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        return [
            (await producer.send_and_wait(topic, value=v, key=k, headers=h)).offset
            for k, v, h in records
        ]
    finally:
        await producer.stop()


async def _stored_offset(database_url: str, group: str, topic: str) -> int | None:
    """The next offset stored for the topic (its records all went to one partition)."""
    rows = await fetch(
        database_url,
        "SELECT max(next_offset) AS next FROM actions.consumer_offset WHERE group_id = $1"
        " AND topic = $2",
        group, topic,
    )  # fmt: skip
    value: int | None = rows[0]["next"]
    return value


async def _inbox(database_url: str) -> set[str]:
    return {r["message_id"] for r in await fetch(database_url, "SELECT * FROM actions.inbox")}


async def test_a_failed_dead_letter_write_holds_the_offset_until_the_poison_reaches_the_dlq(
    base_env: dict[str, str],
    actions_db: str,
    kafka_bootstrap: str,
    gated_broker: GatedBroker,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    topics = Topics(topic_namespace)
    topic, dlq = topics.tier_changed, Topics.dlq(topics.tier_changed)
    settings = actions_settings(base_env)
    group = settings.consumer_group
    gated = actions_settings({**base_env, "KAFKA_BOOTSTRAP_SERVERS": gated_broker.bootstrap_servers,
                              "KAFKA_REQUEST_TIMEOUT_MS": REQUEST_TIMEOUT_MS})  # fmt: skip
    await ensure_topics(settings, topics.all())
    await ensure_topics(gated, [dlq])
    pool = await create_pool(actions_db, size=2, application_name="test")
    producer = make_producer(gated)
    consumer = make_consumer(settings, group, max_poll_records=settings.batch_max_records)
    changes = ChangeConsumer(
        consumer, producer, pool, group_id=group, topics=topics,
        playbooks=load_playbooks(default_playbooks_path()),
        channels=ChannelConfig(webhook=False, email=False, crm=False), clock=clock,
        metrics=actions_metrics(new_registry()), max_records=settings.batch_max_records,
        poll_timeout_ms=settings.poll_timeout_ms,
    )  # fmt: skip
    consumer.subscribe([topics.tier_changed, topics.purchases], listener=changes.listener())
    try:
        await producer.start()
        await producer.partitions_for(dlq)  # it has written there before: it knows the topic
        await consumer.start()
        await gated_broker.gate.close()

        good = [
            tier_change("chg-1", "cust-1", "value_tier", "silver", "gold"),
            tier_change("chg-2", "cust-1", "lifecycle_stage", "new", "at_risk"),
        ]
        poison = b"{not json"
        # One key: one partition, the poison first and the changes behind it.
        offsets = await _send(kafka_bootstrap, topic, [(b"cust-1", poison, []),
                                                      *map(_record, good)])  # fmt: skip
        poison_offset, last_offset = offsets[0], offsets[-1]
        claimed = {f"tier-changed:{c.id}" for c in good}

        # Step the consumer until its batch fails, or (what must not happen) it moves on.
        async def tried() -> str | None:
            try:
                await changes.step()
            except KafkaError as exc:
                return f"failed: {exc!r}"
            moved = await _stored_offset(actions_db, group, topic)
            return f"moved to {moved}" if moved is not None else None

        outcome = await wait_until(tried, within=60)
        stored = await _stored_offset(actions_db, group, topic)
        assert stored is None or stored <= poison_offset, outcome
        assert not await _inbox(actions_db) & claimed
        assert outcome.startswith("failed"), outcome
        assert await fetch(actions_db, "SELECT id FROM actions.task") == []

        await gated_broker.gate.open()

        async def applied() -> bool:
            try:
                await changes.step()
            except KafkaError:
                return False  # the producer was not reconnected yet: the next step retries
            return (await _stored_offset(actions_db, group, topic) or 0) > last_offset

        await wait_until(applied, within=60)
    finally:
        await changes.close()
        await consumer.stop()
        await producer.stop()
        await pool.close()

    assert await _stored_offset(actions_db, group, topic) == last_offset + 1
    assert claimed <= await _inbox(actions_db)
    tasks = await fetch(actions_db, "SELECT tier_change_id FROM actions.task")
    assert {t["tier_change_id"] for t in tasks} >= {"chg-1"}  # the gold upgrade's task
    dead = await read_topic(gated_broker.bootstrap_servers, dlq, expect=1)
    assert dead, "the poison record never reached the dead-letter topic"
    # At least once (a retried batch writes its poison again), and nothing but the poison.
    assert all(r.value == poison for r in dead)
    assert {
        (header(r.headers, "dlq_original_topic"), header(r.headers, "dlq_original_offset"))
        for r in dead
    } == {(topic, str(poison_offset))}
    assert all(header(r.headers, "dlq_consumer_group") == group for r in dead)
