"""A dead-letter write that fails holds the actions consumer's partition: the stored offset
stays before the poison record and the tier changes behind it are not applied; once the
write goes through, the poison is in `<topic>.dlq` (at least once, docs/OPERATIONS.md) and
the changes behind it are applied.

The consumer reads the session broker; its producer (dead letters) writes to a private
broker through a `GatedBroker` (tests/faults/outages.py), so closing the gate takes the
broker away from the producer alone, as a DLQ write that cannot be acknowledged.
"""

from __future__ import annotations

from functools import partial

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
    make_consumer,
    make_producer,
)
from shared.metrics import new_registry
from shared.topics import Topics
from tests.faults.outages import GatedBroker
from tests.integration.actions.support import actions_settings, fetch, tier_change
from tests.integration.scorer.support import read_topic
from tests.support.dead_letters import (
    assert_only_the_poison,
    send_acked,
    step_until_failed,
    step_until_past,
    stored_offset,
)

# The producer gives a record up (KafkaTimeoutError) after this long without the broker.
REQUEST_TIMEOUT_MS = "2000"


def _record(change: TierChanged) -> tuple[bytes, bytes, Headers]:
    """A tier change as the scorer's relay publishes it (keyed by customer, CloudEvents)."""
    headers = cloudevent_headers(ce_id=change.id, ce_source="tierstream/scorer",
                                 ce_type=TIER_CHANGED_TYPE, ce_time=change.emitted_at)  # fmt: skip
    return change.customer_id.encode(), change.to_json(), headers


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
        offsets = await send_acked(kafka_bootstrap, topic, [(b"cust-1", poison, []),
                                                      *map(_record, good)])  # fmt: skip
        poison_offset, last_offset = offsets[0], offsets[-1]
        claimed = {f"tier-changed:{c.id}" for c in good}

        stored = partial(stored_offset, actions_db, "actions", group, topic)
        outcome = await step_until_failed(changes.step, stored)
        held = await stored()
        assert held is None or held <= poison_offset, outcome
        assert not await _inbox(actions_db) & claimed
        assert outcome.startswith("failed"), outcome
        assert await fetch(actions_db, "SELECT id FROM actions.task") == []

        await gated_broker.gate.open()

        await step_until_past(changes.step, stored, last_offset)
    finally:
        await changes.close()
        await consumer.stop()
        await producer.stop()
        await pool.close()

    assert await stored() == last_offset + 1
    assert claimed <= await _inbox(actions_db)
    tasks = await fetch(actions_db, "SELECT tier_change_id FROM actions.task")
    assert {t["tier_change_id"] for t in tasks} >= {"chg-1"}  # the gold upgrade's task
    dead = await read_topic(gated_broker.bootstrap_servers, dlq, expect=1)
    assert_only_the_poison(dead, poison, topic=topic, offset=poison_offset, group=group)
