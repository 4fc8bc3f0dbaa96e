"""The offset fence rejects a stale consumer's batch; the relay publishes each change once."""

from __future__ import annotations

import json
from collections.abc import Awaitable

import pytest
from aiokafka import AIOKafkaProducer

from services.scorer.batch import apply_batch
from services.scorer.db import create_pool
from services.scorer.evaluation import Scoring
from services.scorer.relay import BACKLOG_QUERY
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.contracts import TIER_CHANGED_TYPE
from shared.domain.rules import load_rules
from shared.domain.state import Event
from shared.kafka import ensure_topics, header
from shared.offsets import Fenced, OffsetMove
from shared.topics import SCORER_GROUP, Topics
from tests.integration.scorer.support import (
    NOW,
    connect,
    count,
    customer_rows,
    login,
    produce,
    purchase,
    read_topic,
    running_scorer,
    scorer_settings,
    topic_router,
    wait_until,
)


async def test_the_fence_rolls_back_a_stale_consumers_whole_batch(scorer_db: str) -> None:
    scoring = Scoring(load_rules(ScorerSettings().rules_file))
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:

        async def apply(event_id: str, expected: int | None, next_offset: int) -> None:
            moves = [OffsetMove("t", 0, expected, next_offset)]
            await apply_batch(
                pool,
                [purchase(event_id, "c1", days_ago=1)],
                moves,
                group_id=SCORER_GROUP,
                scoring=scoring,
                now=NOW,
            )

        await apply("e1", None, 10)  # the owner's first commit creates the row
        with pytest.raises(Fenced):
            await apply("zombie-1", None, 5)  # a stale consumer that also saw no row
        await apply("e2", 10, 20)
        with pytest.raises(Fenced):
            await apply("zombie-2", 10, 15)  # read 10 at assignment; the owner moved on
    finally:
        await pool.close()
    async with connect(scorer_db) as conn:
        assert await conn.fetchval("SELECT next_offset FROM scorer.consumer_offset") == 20
        inbox = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM scorer.inbox")}
    assert inbox == {"e1", "e2"}  # the zombies' claims were rolled back with their offsets
    assert (await customer_rows(scorer_db))["c1"]["state"]["lifetime_orders"] == 2


async def test_the_relay_publishes_every_change_exactly_once(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    events: list[Event] = [
        purchase(f"p{i}", f"c{i % 5}", days_ago=i * 11, amount="3000") for i in range(15)
    ]
    events += [login(f"l{i}", f"c{i}", days_ago=40) for i in range(5)]
    async with connect(scorer_db) as conn:  # Postgres's clock: the relay stamps with now()
        before = await conn.fetchval("SELECT now()")
    async with running_scorer(scorer_settings(base_env), clock):
        await produce(kafka_bootstrap, topic_router(topic_namespace), events)
        await wait_until(lambda: _offsets_reach(scorer_db, len(events)))
        await wait_until(lambda: _equals(count(scorer_db, BACKLOG_QUERY), 0))
    async with connect(scorer_db) as conn:
        after = await conn.fetchval("SELECT now()")
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM scorer.tier_change")}
        published = await conn.fetch("SELECT seq, published_at FROM scorer.tier_change_published")
    assert len(rows) >= 15  # three dimensions for five customers at least
    # Each change was marked published once, with the time it went out.
    assert sorted(r["seq"] for r in published) == sorted(r["seq"] for r in rows.values())
    assert all(before <= r["published_at"] <= after for r in published), (before, after)
    on_the_topic = await read_topic(
        kafka_bootstrap, Topics(topic_namespace).tier_changed, expect=len(rows)
    )
    ids: list[str] = []
    for record in on_the_topic:
        ce_id = header(record.headers, "ce_id")
        assert ce_id is not None, record
        ids.append(ce_id)
    assert sorted(ids) == sorted(rows)  # every change, none twice
    for record in on_the_topic:
        body = json.loads(record.value)
        row = rows[body["id"]]
        assert header(record.headers, "ce_type") == TIER_CHANGED_TYPE
        assert record.key == row["customer_id"].encode()
        assert (body["dimension"], body["from"], body["to"]) == (
            row["dimension"],
            row["from_class"],
            row["to_class"],
        )
        assert body["cause"] == "event" and body["rules_version"] == row["rules_version"]
    for customer in {row["customer_id"] for row in rows.values()}:  # per customer: decision order
        on_topic = [i for i in ids if rows[i]["customer_id"] == customer]
        assert on_topic == sorted(on_topic, key=lambda i: rows[i]["seq"])


async def _offsets_reach(database_url: str, records: int) -> bool:
    return (
        await count(
            database_url, "SELECT coalesce(sum(next_offset), 0) FROM scorer.consumer_offset"
        )
        >= records
    )


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


TRACE_OLD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_NEW = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_change_carries_the_trace_context_of_its_latest_event(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    topics = Topics(topic_namespace)
    sent = [
        (purchase("p-old", "traced", days_ago=5), TRACE_OLD),
        (purchase("p-new", "traced", days_ago=1), TRACE_NEW),  # the trigger: latest event time
        (purchase("p-plain", "untraced", days_ago=1), None),
        (purchase("p-bad", "garbled", days_ago=1), "not-a-traceparent"),
    ]
    # Produced before the scorer starts: the customer's two records (one partition) arrive in
    # one batch, so one evaluation decides its changes, triggered by the later event.
    await ensure_topics(ScorerSettings.model_validate(base_env), topics.all())
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for event, trace in sent:
            headers = [("traceparent", trace.encode())] if trace else []
            await producer.send_and_wait(
                topics.purchases, value=event.model_dump_json().encode(),
                key=event.customer_id.encode(), headers=headers,
            )  # fmt: skip
    finally:
        await producer.stop()
    async with running_scorer(scorer_settings(base_env), clock):
        await wait_until(lambda: _offsets_reach(scorer_db, len(sent)))
        published = await read_topic(kafka_bootstrap, topics.tier_changed, expect=9)
    traces = {
        (json.loads(r.value)["customer_id"], header(r.headers, "traceparent")) for r in published
    }
    assert traces == {("traced", TRACE_NEW), ("untraced", None), ("garbled", None)}
