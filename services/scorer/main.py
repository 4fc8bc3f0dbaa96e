"""Run the scorer: consumer, outbox relay, sweeper, re-bucketing and the read API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.scorer import queries, store
from services.scorer.app import create_app
from services.scorer.consumer import EventConsumer
from services.scorer.db import Pool, create_pool
from services.scorer.metrics import ScorerMetrics, scorer_metrics
from services.scorer.rebucket import Rebucketer, ScoringHolder, latest_cut_points
from services.scorer.relay import OutboxRelay
from services.scorer.settings import ScorerSettings
from services.scorer.sweeper import Sweeper
from shared.clock import Clock, clock_for
from shared.domain.rules import Rules, RulesError, load_rules
from shared.group_progress import GroupProgress
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.logging import get_logger
from shared.loops import Step, run_loop
from shared.metrics import new_registry
from shared.migrations import require_migrated
from shared.readiness import BrokerCheck, readiness
from shared.served_namespace import require_namespace
from shared.service import Loop, serve
from shared.topics import Topics

log = get_logger(__name__)


def load_rules_or_exit(settings: ScorerSettings) -> Rules:
    """The validated rules file; an invalid one stops the scorer with RulesError's message."""
    try:
        return load_rules(settings.rules_file)
    except RulesError as exc:
        raise SystemExit(f"scorer: invalid rules file: {exc}") from exc


async def run(
    settings: ScorerSettings, *, stop: asyncio.Event | None = None, clock: Clock | None = None
) -> None:
    """Serve the scorer until `stop` is set (or SIGTERM / SIGINT when no `stop` is given)."""
    settings.require_keys()
    rules = load_rules_or_exit(settings)
    clock = clock or clock_for(settings.now)
    topics = Topics(settings.topic_namespace)
    await ensure_topics(settings, topics.all())
    pool = await create_pool(
        settings.database_url, size=settings.db_pool_size, application_name="tierstream-scorer"
    )
    api_pool = await create_pool(
        settings.database_url, size=settings.api_db_pool_size,
        application_name="tierstream-scorer-api", within=settings.api_db_timeout_s,
    )  # fmt: skip
    producer = make_producer(settings)
    # A short fetch wait: some brokers (the embedded tansu) answer a waiting fetch only when
    # the wait ends, not when data arrives; a real Kafka answers at once either way.
    consumer = make_consumer(
        settings, settings.group_id, max_poll_records=settings.batch_max_records
    )
    try:
        # The scorer never migrates: its loops would fail on whatever a missing revision adds.
        await require_migrated(pool, "scorer")
        # Before anything is written: a database serving another namespace is not ours.
        await require_namespace(pool, "scorer", settings.topic_namespace)
        async with pool.acquire() as conn:
            await store.activate_rules(conn, rules.version)
        await producer.start()
        holder = ScoringHolder(rules)
        if holder.population_mode:
            async with pool.acquire() as conn:
                holder.use(await latest_cut_points(conn))
        await _serve(settings, stop, clock, (pool, api_pool), producer, consumer, holder)
    finally:
        await consumer.stop()
        await producer.stop()
        await asyncio.gather(pool.close(), api_pool.close())


async def _serve(
    settings: ScorerSettings, stop: asyncio.Event | None, clock: Clock, pools: tuple[Pool, Pool],
    producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, holder: ScoringHolder,
) -> None:  # fmt: skip
    pool, api_pool = pools  # the work's, the HTTP API's
    registry = new_registry()
    metrics = scorer_metrics(registry)
    topics = Topics(settings.topic_namespace)
    outbox_ready = asyncio.Event()
    relay = OutboxRelay(pool, producer, topic=topics.tier_changed, batch=settings.relay_batch,
                        clock=clock, metrics=metrics,
                        max_message_bytes=settings.kafka_max_message_bytes)  # fmt: skip
    events = EventConsumer(
        consumer, producer, pool, group_id=settings.group_id, scoring=holder, clock=clock,
        metrics=metrics, max_records=settings.batch_max_records,
        poll_timeout_ms=settings.poll_timeout_ms, linger_ms=settings.batch_linger_ms,
        lanes=settings.batch_lanes, state_cache_size=settings.state_cache_size,
        on_changes=outbox_ready.set, publish=partial(relay.drain, rounds=drain_rounds(settings)),
        max_message_bytes=settings.kafka_max_message_bytes,
    )  # fmt: skip
    consumer.subscribe(list(topics.events), listener=events.listener())
    await consumer.start()
    broker = BrokerCheck(within=settings.ready_timeout_s)
    broker.consumer = consumer
    progress = GroupProgress(events, pool, schema="scorer", topics=topics.events,
                             max_lag=settings.sweep_max_lag,
                             max_age_s=settings.progress_max_age_s,
                             held=metrics.sweep_held_partitions, work="time sweeps")  # fmt: skip
    sweeper = Sweeper(pool, scoring=holder, clock=clock, batch=settings.sweep_batch,
                      metrics=metrics, on_changes=outbox_ready.set, scope=progress.scope,
                      retry=timedelta(seconds=settings.sweep_retry_s))  # fmt: skip
    rebucket = Rebucketer(pool, holder, clock=clock, metrics=metrics, on_changes=outbox_ready.set,
                          scope=progress.scope)  # fmt: skip
    # Rule changes and re-bucketing skip customers (or a whole pass) while partitions are
    # unread, and are woken once every partition is read.
    read_again = [progress.woken_when_read() for _ in range(2)]
    loops = [
        _loop("consumer", events.step, 0.0, metrics),
        _loop("relay", relay.step, settings.relay_interval_s, metrics, wake=outbox_ready),
        _loop("progress", progress.report_step, settings.progress_interval_s, metrics),
        _loop("sweeper", sweeper.step, settings.sweep_interval_s, metrics),
        _loop("rule_change", sweeper.migrate_step, settings.population_interval_s, metrics,
              wake=read_again[0]),
        _loop("rebucket", rebucket.step, settings.population_interval_s, metrics,
              wake=read_again[1]),
        _loop("cut_points", rebucket.adopt_step, settings.cut_points_poll_s, metrics),
        _loop("gauges", gauge_step(pool, metrics, clock), settings.gauge_interval_s, metrics),
    ]  # fmt: skip
    metrics.start_at_zero(loop.__name__ for loop in loops)
    ready = readiness(api_pool, broker, within=settings.ready_timeout_s)
    app = create_app(settings, pool=api_pool, clock=clock, registry=registry, ready=ready)
    log.info(
        "scorer listening", host=settings.host, port=settings.port, rules=holder().rules.version
    )
    try:
        await serve(app, host=settings.host, port=settings.port, loops=loops, stop=stop,
                    install_signals=stop is None)  # fmt: skip
    finally:
        await events.close()


def drain_rounds(settings: ScorerSettings) -> int:
    """Relay rounds the consumer publishes in after a batch: enough for the changes of a
    full batch (three a new customer, one per dimension) and one more; a backlog beyond
    that is left to the relay loop."""
    return -(-3 * settings.batch_max_records // settings.relay_batch) + 1


def _loop(
    name: str,
    step: Step,
    idle_s: float,
    metrics: ScorerMetrics,
    *,
    wake: asyncio.Event | None = None,
) -> Loop:
    async def loop(stop: asyncio.Event) -> None:
        await run_loop(name, step, stop, idle_s=idle_s, errors=metrics.loop_errors, wake=wake)

    loop.__name__ = name
    return loop


def gauge_step(pool: Pool, metrics: ScorerMetrics, clock: Clock) -> Callable[[], Awaitable[bool]]:
    """Refresh the customers-by-class gauge (classes that emptied drop to 0) and the age of
    the oldest unpublished change (here, not in the relay's rounds: off the hot path)."""
    seen: set[tuple[str, str]] = set()

    async def step() -> bool:
        oldest = await queries.oldest_pending_emitted_at(pool)
        age = 0.0 if oldest is None else (clock.now() - oldest).total_seconds()
        metrics.outbox_oldest_age.set(max(0.0, age))
        _, counts = await queries.count_classes(pool)
        current = {(d.value, c): n for d, per in counts.items() for c, n in per.items()}
        for labels in seen - current.keys():
            metrics.customers.labels(*labels).set(0)
        for labels, n in current.items():
            metrics.customers.labels(*labels).set(n)
        seen.update(current)
        return False

    return step
