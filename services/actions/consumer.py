"""The consumer: tier changes (and purchases, for sequence goals) -> plan -> `apply_batch`.

Offsets live in Postgres: on assignment we seek to the stored offsets, and every batch
advances them with a fenced update in the batch's transaction. Order of a batch: decode and
plan (poison to the DLQ, acked), then one transaction for the effects and the offsets; only
then is anything counted as done, and the new offsets copied (best effort, in the
background) to the Kafka consumer group for lag-based tooling.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.actions.batch import BatchResult, apply_batch
from services.actions.db import Pool
from services.actions.decoding import Decoded, Record, decode
from services.actions.effects import ChannelConfig
from services.actions.metrics import ActionsMetrics
from shared.clock import Clock
from shared.dead_letters import Poison
from shared.domain.playbooks import Playbooks
from shared.fenced_consumer import Batch, FencedConsumer
from shared.logging import get_logger
from shared.offsets import move_past
from shared.topics import Topics
from shared.tracing import Tracer

log = get_logger(__name__)


class ChangeConsumer(FencedConsumer):
    """Consumes tier changes and purchases into tasks, deliveries and enrolments, exactly once."""

    def __init__(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, pool: Pool, *,
        group_id: str, topics: Topics, playbooks: Playbooks, channels: ChannelConfig,
        clock: Clock, metrics: ActionsMetrics, max_records: int, poll_timeout_ms: int,
        on_effects: Callable[[], None] = lambda: None, tracer: Tracer | None = None,
        max_message_bytes: int = 1_048_588,
    ) -> None:  # fmt: skip
        super().__init__(consumer, pool, group_id=group_id, schema="actions", metrics=metrics,
                         max_message_bytes=max_message_bytes)  # fmt: skip
        self.producer, self.topics, self.playbooks = producer, topics, playbooks
        self.channels, self.clock, self.metrics = channels, clock, metrics
        self.max_records, self.poll_timeout_ms = max_records, poll_timeout_ms
        self.on_effects, self.tracer = on_effects, tracer

    async def poll(self) -> Batch:
        """One fetch of up to the batch size."""
        batch: Batch = await self.consumer.getmany(
            timeout_ms=self.poll_timeout_ms, max_records=self.max_records
        )
        return batch

    async def handle(self, batch: Batch) -> None:
        """Plan and apply the batch in one transaction."""
        await self._process(batch)

    async def _process(self, batch: dict[TopicPartition, list[Record]]) -> None:
        started = asyncio.get_running_loop().time()
        records = [r for tp in sorted(batch) for r in batch[tp]]
        decoded = decode(records, self.topics, self.playbooks, self.tracer)
        await self._dead_letter(decoded.poison)
        expected = {tp: self.fences[tp] for tp in batch}
        moves = [
            move_past(tp.topic, tp.partition, expected[tp], batch[tp][-1]) for tp in sorted(batch)
        ]
        result = await apply_batch(
            self.pool, decoded.changes, decoded.goals, moves, group_id=self.group_id,
            playbooks=self.playbooks, channels=self.channels, now=self.clock.now(),
        )  # fmt: skip
        for move in moves:
            tp = TopicPartition(move.topic, move.partition)
            if self.fences.get(tp, -1) == expected[tp]:  # unless a rebalance re-seeked meanwhile
                self.fences[tp] = move.next_offset
        self.group_commits.offer(
            {TopicPartition(m.topic, m.partition): m.next_offset for m in moves}
        )
        self._count(result, decoded)
        self._log(result, decoded)
        self.metrics.batch_size.observe(len(records))
        self.metrics.batch_duration.observe(asyncio.get_running_loop().time() - started)
        self.on_effects()

    async def _dead_letter(self, poison: Sequence[Poison]) -> None:
        """Write poison records to `<topic>.dlq` (acknowledged) and count them."""
        for dlq in await self.write_dead_letters(self.producer, poison):
            self.metrics.dlq_records.labels(dlq).inc()

    def _count(self, result: BatchResult, decoded: Decoded) -> None:
        records = self.metrics.records
        records.labels("tier_changed", "processed").inc(result.fresh)
        records.labels("tier_changed", "duplicate").inc(result.duplicates)
        records.labels("tier_changed", "stale").inc(len(result.stale))
        records.labels("purchases", "processed").inc(len(decoded.goals) + decoded.ignored)
        poisoned = Counter(self._source(p.record.topic) for p in decoded.poison)
        for source, n in poisoned.items():
            records.labels(source, "dead_lettered").inc(n)
        for (kind, playbook), n in result.planned.items():
            self.metrics.planned.labels(kind, playbook).inc(n)
        for _, failure in result.failed:
            self.metrics.template_failures.labels(failure.kind, failure.playbook).inc()
        for sequence, n in result.enrolled.items():
            self.metrics.enrolments_started.labels(sequence).inc(n)
        for (sequence, reason), n in result.refused.items():
            self.metrics.enrolments_refused.labels(sequence, reason).inc(n)
        for sequence, n in result.cancelled_steps.items():
            self.metrics.steps.labels(sequence, "cancelled").inc(n)

    def _log(self, result: BatchResult, decoded: Decoded) -> None:
        """Ids of what was applied; customer ids only at debug level."""
        for change_id in result.redelivered:
            log.info("tier change already applied; redelivery dropped", tier_change_id=change_id)
        for change_id in result.stale:
            log.warning("tier change older than one already applied; not acted on",
                        tier_change_id=change_id)  # fmt: skip
        for change_id, failure in result.failed:
            log.error(
                "action template failed", tier_change_id=change_id, playbook=failure.playbook,
                action=failure.action, kind=failure.kind, error=failure.error,
                outcome="task opened with a fallback title" if failure.fallback else "left out",
            )  # fmt: skip
        if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):  # lines nobody sees
            return
        for planned in decoded.changes:
            change = planned.change
            log.debug(
                "tier change planned", tier_change_id=change.id, customer_id=change.customer_id,
                dimension=change.dimension.value, to=change.to,
                actions=[request.kind for request in planned.requests],
            )  # fmt: skip
        for hit in decoded.goals:
            log.debug("purchase recorded as a goal event", event_id=hit.event_id,
                      customer_id=hit.customer_id)  # fmt: skip

    def _source(self, topic: str) -> str:
        return "tier_changed" if topic == self.topics.tier_changed else "purchases"
