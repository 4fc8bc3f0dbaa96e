"""Who publishes a batch's changes: the consumer itself, and the relay loop only as a fallback.

The EventConsumer is built as services/scorer/main.py's `_serve` builds it (real Kafka clients
on the test broker, the scorer's database, `OutboxRelay.drain` as `publish`); only
`on_changes`, which wakes the relay loop there, records the wake here instead.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.scorer import store
from services.scorer.consumer import EventConsumer
from services.scorer.db import create_pool
from services.scorer.metrics import scorer_metrics
from services.scorer.rebucket import ScoringHolder
from services.scorer.relay import RELAY_LOCK_KEY, OutboxRelay
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.domain.rules import load_rules
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.metrics import new_registry
from shared.pg import TRANSIENT_DB_ERRORS
from shared.topics import Topics
from tests.faults.outages import GatedBroker, cut_off_database
from tests.integration.scorer.support import (
    NOW,
    connect,
    count,
    produce,
    purchase,
    read_topic,
    scorer_settings,
    topic_router,
)

PENDING = "SELECT count(*) FROM scorer.tier_change_pending"
CHANGES = "SELECT count(*) FROM scorer.tier_change"
APP = "consumer-publish-test"


@dataclass
class Scorer:
    """The consumer as the scorer runs it, and what a test observes of it."""

    events: EventConsumer
    registry: CollectorRegistry
    settings: ScorerSettings
    wakes: list[str] = field(default_factory=list)
    # (what, whether the cyclic collector was enabled) at each publish the consumer made.
    publishes: list[tuple[str, bool]] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(f"tierstream_scorer_{name}", labels)


@contextlib.asynccontextmanager
async def scorer(
    env: dict[str, str], database_url: str, *, publishing: bool = True,
    relay_producer: AIOKafkaProducer | None = None,
) -> AsyncIterator[Scorer]:  # fmt: skip
    """An EventConsumer subscribed and started as `_serve` does it; `relay_producer` (default:
    the consumer's own producer, as in the scorer) is the one the relay publishes with."""
    settings = scorer_settings(env)
    rules = load_rules(settings.rules_file)
    topics = Topics(settings.topic_namespace)
    await ensure_topics(settings, topics.all())
    pool = await create_pool(database_url, size=4, application_name=APP)
    producer = make_producer(settings)
    consumer = make_consumer(
        settings, settings.group_id, max_poll_records=settings.batch_max_records,
    )  # fmt: skip
    registry = new_registry()
    metrics = scorer_metrics(registry)
    try:
        async with pool.acquire() as conn:
            await store.activate_rules(conn, rules.version)
        await producer.start()
        relay = OutboxRelay(pool, relay_producer or producer, topic=topics.tier_changed,
                            batch=settings.relay_batch, clock=FixedClock(NOW), metrics=metrics,
                            max_message_bytes=settings.kafka_max_message_bytes)  # fmt: skip
        wakes: list[str] = []
        publishes: list[tuple[str, bool]] = []

        async def drain() -> bool:
            publishes.append(("drain", gc.isenabled()))
            return await relay.drain()

        events = EventConsumer(
            consumer, producer, pool, group_id=settings.group_id, scoring=ScoringHolder(rules),
            clock=FixedClock(NOW), metrics=metrics, max_records=settings.batch_max_records,
            poll_timeout_ms=settings.poll_timeout_ms, linger_ms=settings.batch_linger_ms,
            lanes=settings.batch_lanes, state_cache_size=settings.state_cache_size,
            on_changes=lambda: wakes.append("relay loop"),
            publish=drain if publishing else None,
        )  # fmt: skip
        consumer.subscribe(list(topics.events), listener=events.listener())
        await consumer.start()
        try:
            yield Scorer(events, registry, settings, wakes, publishes)
        finally:
            await events.close()
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


async def step_until(
    events: EventConsumer, done: Callable[[], Awaitable[bool]], *, within: float = 30.0
) -> None:
    """Run the consumer loop's steps (as `run_loop` does) until `done`."""
    deadline = time.monotonic() + within
    while not await done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {within} s")
        await events.step()


def assigned(events: EventConsumer) -> Callable[[], Awaitable[bool]]:
    """Every partition of the three event topics is assigned and positioned (9 partitions)."""

    async def probe() -> bool:
        owned = events.consumer.assignment()
        return len(owned) == 9 and not events.needs_resync and owned <= events.fences.keys()

    return probe


def rows(database_url: str, sql: str, expect: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await count(database_url, sql) == expect

    return probe


async def test_a_published_batch_does_not_wake_the_relay_loop_as_well(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    async with scorer(base_env, scorer_db) as s:
        await step_until(s.events, assigned(s.events))
        await produce(kafka_bootstrap, topic_router(topic_namespace), [purchase("p1", "a", 3)])
        await step_until(s.events, rows(scorer_db, CHANGES, 3))  # a new customer: 3 dimensions
        # Published from the consumer's step, with the collector still paused; nothing left.
        assert s.publishes == [("drain", False)]
        assert gc.isenabled()
        assert await count(scorer_db, PENDING) == 0
        assert s.wakes == []
    records = await read_topic(kafka_bootstrap, Topics(topic_namespace).tier_changed, expect=3)
    assert len(records) == 3


async def test_a_publish_locked_out_by_another_round_wakes_the_relay_loop(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    # That round may have read the outbox before this batch committed: the loop runs again.
    async with scorer(base_env, scorer_db) as s, connect(scorer_db) as other_relay:
        await step_until(s.events, assigned(s.events))
        await other_relay.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK_KEY)
        await produce(kafka_bootstrap, topic_router(topic_namespace), [purchase("p1", "a", 3)])
        await step_until(s.events, rows(scorer_db, CHANGES, 3))
        assert s.publishes == [("drain", False)]
        assert s.wakes == ["relay loop"]
        assert await count(scorer_db, PENDING) == 3  # left to the relay loop
        assert s.value("loop_errors_total", loop="relay") in (None, 0)


async def test_a_failed_publish_wakes_the_relay_loop_and_counts_a_relay_error(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str,
    gated_broker: GatedBroker,
) -> None:  # fmt: skip
    # The relay publishes to a broker that goes away (the events still come from the test's).
    gated_env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": gated_broker.bootstrap_servers,
                 "KAFKA_REQUEST_TIMEOUT_MS": "2000"}  # fmt: skip
    gated = scorer_settings(gated_env)
    tier_changed = Topics(topic_namespace).tier_changed
    await ensure_topics(gated, [tier_changed])
    relay_producer = make_producer(gated)
    await relay_producer.start()
    try:
        await relay_producer.partitions_for(tier_changed)  # known before the outage
        async with scorer(base_env, scorer_db, relay_producer=relay_producer) as s:
            await step_until(s.events, assigned(s.events))
            await gated_broker.gate.close()
            await produce(kafka_bootstrap, topic_router(topic_namespace), [purchase("p1", "a", 3)])
            await step_until(s.events, rows(scorer_db, CHANGES, 3))
            assert s.publishes == [("drain", False)]
            assert s.wakes == ["relay loop"]
            assert s.value("loop_errors_total", loop="relay") == 1
            assert await count(scorer_db, PENDING) == 3  # committed, left to the relay loop
            assert gc.isenabled()
    finally:
        await relay_producer.stop()


async def test_without_publish_the_relay_loop_is_woken_for_a_batch_with_changes_only(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    router = topic_router(topic_namespace)
    async with scorer(base_env, scorer_db, publishing=False) as s:
        await step_until(s.events, assigned(s.events))
        await produce(kafka_bootstrap, router, [purchase("p1", "a", 3)])
        await step_until(s.events, rows(scorer_db, CHANGES, 3))
        assert s.wakes == ["relay loop"]
        assert await count(scorer_db, PENDING) == 3  # nothing published by the consumer

        await produce(kafka_bootstrap, router, [purchase("p1", "a", 3)])  # sent again: no change

        async def duplicate_counted() -> bool:
            return s.value("events_total", type="purchase", outcome="duplicate") == 1

        await step_until(s.events, duplicate_counted)
        assert await count(scorer_db, CHANGES) == 3
        assert s.wakes == ["relay loop"]  # not woken for the batch without changes
        assert s.publishes == []


async def test_a_failing_step_still_resumes_the_collector_and_resyncs_after(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    async with scorer(base_env, scorer_db) as s:
        await step_until(s.events, assigned(s.events))
        await produce(kafka_bootstrap, topic_router(topic_namespace), [purchase("p1", "a", 3)])
        await cut_off_database(
            scorer_db, allow=False, application_name=APP
        )  # the batch cannot be applied
        try:
            failure = await first_failure(s.events)
            assert isinstance(failure, (asyncpg.PostgresError, *TRANSIENT_DB_ERRORS)), failure
            assert gc.isenabled()
            assert s.events.needs_resync
        finally:
            await cut_off_database(scorer_db, allow=True, application_name=APP)
        await step_until(s.events, rows(scorer_db, CHANGES, 3))  # re-seeked, then applied
        assert gc.isenabled()


async def first_failure(events: EventConsumer, *, within: float = 30.0) -> Exception:
    """Step until a step raises; what it raised."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            await events.step()
        except Exception as exc:
            return exc
    raise AssertionError(f"no step failed within {within} s")
