"""The background loops of one actions process: consumer, senders, gauges and retention."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from services.actions import queries
from services.actions.channels import Channels
from services.actions.consumer import ChangeConsumer
from services.actions.db import Connection, Pool
from services.actions.dispatcher import Dispatcher, DispatchPolicy
from services.actions.effects import ChannelConfig
from services.actions.metrics import ActionsMetrics, prime_metrics
from services.actions.retention import prune_step, retention_for
from services.actions.settings import ActionsSettings
from shared.clock import Clock
from shared.domain.playbooks import Playbooks
from shared.group_progress import GroupProgress
from shared.kafka import make_consumer, make_producer
from shared.loops import Step, run_loop
from shared.partition_scope import PartitionScope
from shared.readiness import BrokerCheck
from shared.service import Loop
from shared.topics import Topics
from shared.tracing import Tracer


@dataclass(frozen=True)
class Parts:
    """What the loops of one process share."""

    settings: ActionsSettings
    pool: Pool
    playbooks: Playbooks
    clock: Clock
    metrics: ActionsMetrics
    broker: BrokerCheck
    tracer: Tracer


class _Progress:
    """The consumer's GroupProgress while the consumer loop runs it (the loop makes its own
    Kafka clients); before and after, steps wait for it."""

    def __init__(self) -> None:
        self.current: GroupProgress | None = None

    async def report_step(self) -> bool:
        return await self.current.report_step() if self.current is not None else False

    async def scope(self, conn: Connection) -> PartitionScope:
        if self.current is None:
            return NOT_JOINED
        return await self.current.scope(conn)


# No consumer yet: nothing is known to be read.
NOT_JOINED = PartitionScope(0, held=("no consumer yet",))


def build_loops(parts: Parts, channels: Channels, config: ChannelConfig) -> list[Loop]:
    """Consumer, dispatcher, scheduler, gauges and retention; a committed batch wakes senders."""
    settings, metrics = parts.settings, parts.metrics
    progress = _Progress()
    senders = _dispatchers(parts, channels, progress)

    def wake_senders() -> None:
        for sender in senders:
            sender.wake.set()

    gauges = _gauge_step(parts.pool, parts.clock, metrics)
    loops = [
        _consume(parts, config, progress, on_effects=wake_senders),
        _loop("progress", progress.report_step, settings.progress_interval_s, metrics),
        *[_named(s.name, s.run) for s in senders],
        _loop("gauges", gauges, settings.gauge_interval_s, metrics),
    ]
    retention = retention_for(settings, parts.playbooks)
    if retention is not None:
        prune = prune_step(parts.pool, retention, parts.clock, metrics)
        loops.append(_loop("prune", prune, settings.prune_interval_s, metrics))
    _prime(parts, loops)
    return loops


def _prime(parts: Parts, loops: list[Loop]) -> None:
    """Known label combinations start at 0 (dead letters, outcomes, loop errors, ...)."""
    topics = Topics(parts.settings.topic_namespace)
    prime_metrics(
        parts.metrics, playbooks=parts.playbooks,
        loops=[getattr(loop, "__name__", "loop") for loop in loops],
        dlq_topics=[Topics.dlq(topics.tier_changed), Topics.dlq(topics.purchases)],
    )  # fmt: skip


def _consume(
    parts: Parts, config: ChannelConfig, progress: _Progress, *, on_effects: Callable[[], None]
) -> Loop:
    """The consumer loop (it starts and stops its own Kafka clients)."""
    settings = parts.settings
    topics = Topics(settings.topic_namespace)

    async def consume(stop: asyncio.Event) -> None:
        group = settings.consumer_group
        producer = make_producer(settings)
        consumer = make_consumer(settings, group, max_poll_records=settings.batch_max_records)
        changes = ChangeConsumer(
            consumer, producer, parts.pool, group_id=group, topics=topics,
            playbooks=parts.playbooks, channels=config, clock=parts.clock, metrics=parts.metrics,
            max_records=settings.batch_max_records, poll_timeout_ms=settings.poll_timeout_ms,
            on_effects=on_effects, tracer=parts.tracer,
            max_message_bytes=settings.kafka_max_message_bytes,
        )  # fmt: skip
        consumed = [topics.tier_changed, topics.purchases]
        consumer.subscribe(consumed, listener=changes.listener())
        progress.current = GroupProgress(
            changes, parts.pool, schema="actions", topics=consumed,
            max_lag=settings.step_max_lag, max_age_s=settings.progress_max_age_s,
            held=parts.metrics.steps_held_partitions, work="sequence steps",
        )  # fmt: skip
        try:
            await producer.start()
            await consumer.start()
            parts.broker.consumer = consumer
            errors = parts.metrics.loop_errors
            await run_loop("consumer", changes.step, stop, idle_s=0.0, errors=errors)
        finally:
            progress.current = None
            parts.broker.consumer = None
            await changes.close()
            await consumer.stop()
            await producer.stop()

    consume.__name__ = "consumer"
    return consume


def _dispatchers(parts: Parts, channels: Channels, progress: _Progress) -> list[Dispatcher]:
    """Alerts and task pushes in one sender, sequence steps (the scheduler) in another.

    Alerts and tasks answer a change already read, and go at once. A step is due by the
    clock: it waits until the customer's records are read, since they may end its sequence.
    """
    policy = DispatchPolicy.from_settings(parts.settings)
    pool, clock, metrics = parts.pool, parts.clock, parts.metrics
    return [
        Dispatcher("dispatcher", pool, channels, kinds=("alert", "task"), policy=policy,
                   clock=clock, metrics=metrics),
        Dispatcher("scheduler", pool, channels, kinds=("step",), policy=policy, clock=clock,
                   metrics=metrics, scope=progress.scope),
    ]  # fmt: skip


def _named(name: str, loop: Loop) -> Loop:
    async def run_named(stop: asyncio.Event) -> None:
        await loop(stop)

    run_named.__name__ = name
    return run_named


def _loop(name: str, step: Step, idle_s: float, metrics: ActionsMetrics) -> Loop:
    async def loop(stop: asyncio.Event) -> None:
        await run_loop(name, step, stop, idle_s=idle_s, errors=metrics.loop_errors)

    loop.__name__ = name
    return loop


def _gauge_step(pool: Pool, clock: Clock, metrics: ActionsMetrics) -> Step:
    """Refresh tasks open/overdue/done late per queue, enrolments by sequence and status,
    and exits by sequence and reason."""

    seen: set[tuple[str, str]] = set()

    async def step() -> bool:
        for queue, open_, overdue, late in await queries.task_gauges(pool, now=clock.now()):
            metrics.tasks_open.labels(queue).set(open_)
            metrics.tasks_overdue.labels(queue).set(overdue)
            metrics.tasks_done_late.labels(queue).set(late)
        current: Counter[tuple[str, str]] = Counter()
        exits: Counter[tuple[str, str]] = Counter()
        for sequence, status, reason, n in await queries.enrolment_gauges(pool):
            current[sequence, status] += n
            if status == "exited" and reason is not None:
                exits[sequence, reason] += n
        for labels in seen - current.keys():  # e.g. no active enrolment left: 0, not stale
            metrics.enrolments.labels(*labels).set(0)
        for labels, n in current.items():
            metrics.enrolments.labels(*labels).set(n)
        for labels, n in exits.items():  # only grow: exited enrolments stay exited
            metrics.enrolment_exits.labels(*labels).set(n)
        seen.update(current)
        return False

    return step
