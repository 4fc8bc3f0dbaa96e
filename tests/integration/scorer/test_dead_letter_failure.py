"""A dead-letter write that fails holds the partition: the stored offset stays before the
poison record and nothing behind it is applied; once the write goes through, the poison is
in `<topic>.dlq` (at least once, docs/OPERATIONS.md) and the records behind it are applied.

The scorer's consumer reads the session broker; its producer (dead letters) writes to a
private broker through a `GatedBroker` (tests/faults/outages.py), so closing the gate takes
the broker away from the producer alone, as a DLQ write that cannot be acknowledged.
"""

from __future__ import annotations

import json
from functools import partial

from services.scorer.consumer import EventConsumer
from services.scorer.db import create_pool
from services.scorer.evaluation import Scoring
from services.scorer.metrics import scorer_metrics
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.domain.rules import load_rules
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.metrics import new_registry
from shared.topics import Topics
from tests.faults.outages import GatedBroker
from tests.integration.scorer.support import (
    connect,
    customer_rows,
    purchase,
    read_topic,
    scorer_settings,
)
from tests.support.dead_letters import (
    assert_only_the_poison,
    send_acked,
    step_until_failed,
    step_until_past,
    stored_offset,
)

SCORING = Scoring(load_rules(ScorerSettings().rules_file))
# The producer gives a record up (KafkaTimeoutError) after this long without the broker.
REQUEST_TIMEOUT_MS = "2000"


async def _inbox(database_url: str) -> set[str]:
    async with connect(database_url) as conn:
        return {r["event_id"] for r in await conn.fetch("SELECT event_id FROM scorer.inbox")}


async def test_a_failed_dead_letter_write_holds_the_offset_until_the_poison_reaches_the_dlq(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    gated_broker: GatedBroker,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    topics = Topics(topic_namespace)
    topic, dlq = topics.purchases, Topics.dlq(topics.purchases)
    group = f"scorer-{topic_namespace}"
    settings = scorer_settings(base_env, group_id=group)
    gated = scorer_settings(
        {**base_env, "KAFKA_BOOTSTRAP_SERVERS": gated_broker.bootstrap_servers,
         "KAFKA_REQUEST_TIMEOUT_MS": REQUEST_TIMEOUT_MS},
        group_id=group,
    )  # fmt: skip
    await ensure_topics(settings, topics.all())
    await ensure_topics(gated, [dlq])
    pool = await create_pool(scorer_db, size=2, application_name="test")
    producer = make_producer(gated)
    consumer = make_consumer(
        settings, group, max_poll_records=settings.batch_max_records,
    )  # fmt: skip
    events = EventConsumer(
        consumer, producer, pool, group_id=group, scoring=lambda: SCORING, clock=clock,
        metrics=scorer_metrics(new_registry()), max_records=settings.batch_max_records,
        poll_timeout_ms=settings.poll_timeout_ms,
    )  # fmt: skip
    consumer.subscribe(list(topics.events), listener=events.listener())
    try:
        await producer.start()
        await producer.partitions_for(dlq)  # it has written there before: it knows the topic
        await consumer.start()
        await gated_broker.gate.close()

        good = [purchase(f"good-{i}", "c1", days_ago=i) for i in (1, 2)]
        missing_amount = {k: v for k, v in json.loads(good[0].model_dump_json()).items()
                          if k != "amount"} | {"event_id": "poison-1"}  # fmt: skip
        poison = json.dumps(missing_amount).encode()
        # One key: one partition, the poison first and the good events behind it.
        offsets = await send_acked(kafka_bootstrap, topic, [
            (b"c1", poison, []), *[(b"c1", e.model_dump_json().encode(), []) for e in good],
        ])  # fmt: skip
        poison_offset, last_offset = offsets[0], offsets[-1]

        stored = partial(stored_offset, scorer_db, "scorer", group, topic)
        outcome = await step_until_failed(events.step, stored)
        held = await stored()
        assert held is None or held <= poison_offset, outcome
        assert not await _inbox(scorer_db) & {"poison-1", *[e.event_id for e in good]}
        assert outcome.startswith("failed"), outcome
        assert await customer_rows(scorer_db) == {}

        await gated_broker.gate.open()

        await step_until_past(events.step, stored, last_offset)
    finally:
        await events.close()
        await consumer.stop()
        await producer.stop()
        await pool.close()

    assert await stored() == last_offset + 1
    assert {"good-1", "good-2"} <= await _inbox(scorer_db)
    assert (await customer_rows(scorer_db))["c1"]["state"]["lifetime_orders"] == 2
    dead = await read_topic(gated_broker.bootstrap_servers, dlq, expect=1)
    assert_only_the_poison(dead, poison, topic=topic, offset=poison_offset, group=group)
