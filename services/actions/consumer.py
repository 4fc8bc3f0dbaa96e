"""The consumer: tier changes (and purchases, for sequence goals) -> plan -> `apply_batch`.

Offsets live in Postgres, not in the consumer group: on assignment we seek to the stored
offsets, and every batch advances them with a fenced update in the batch's transaction.
Order of a batch: decode and plan (poison to the DLQ, acked), then one transaction for
the effects and the offsets; only then is anything counted as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from services.actions import store
from services.actions.batch import BatchResult, GoalHit, PlannedChange, apply_batch
from services.actions.db import Pool
from services.actions.effects import ChannelConfig
from services.actions.metrics import ActionsMetrics
from services.actions.store import Fenced, OffsetMove
from shared.clock import Clock
from shared.contracts import PurchaseMade, TierChanged, parse_event
from shared.domain.playbooks import Playbooks, plan_actions
from shared.kafka import dlq_headers
from shared.logging import get_logger
from shared.topics import Topics

log = get_logger(__name__)

DLQ_MAX_BYTES = 900_000  # a larger poison payload is cut (and flagged) so the DLQ write succeeds
Record: TypeAlias = Any  # aiokafka's ConsumerRecord (the library ships no types)


@dataclass(frozen=True)
class Poison:
    record: Record
    error: str


@dataclass
class Decoded:
    changes: list[PlannedChange] = field(default_factory=list)
    goals: list[GoalHit] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    ignored: int = 0


def decode(records: Iterable[Record], topics: Topics, playbooks: Playbooks) -> Decoded:
    """Parse and plan each record; what cannot be parsed or planned is poison."""
    out = Decoded()
    for record in records:
        try:
            if record.topic == topics.tier_changed:
                change = TierChanged.model_validate_json(record.value)
                _require_storable(change.model_dump())
                out.changes.append(PlannedChange(change, plan_actions(change, playbooks)))
            else:
                _decode_purchase(record, out)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
            out.poison.append(Poison(record, text or str(exc)))
        except Exception as exc:  # a template that fails on this change, bad bytes, ...
            out.poison.append(Poison(record, f"{type(exc).__name__}: {exc}"))
    return out


def _decode_purchase(record: Record, out: Decoded) -> None:
    event = parse_event(record.value)
    if not isinstance(event, PurchaseMade):
        raise ValueError(f"a {event.type} event on the purchases topic")
    _require_storable(event.customer_id)
    if event.refund_of is None:  # a refund is not "bought again"
        out.goals.append(GoalHit(event.customer_id, event.occurred_at))
    else:
        out.ignored += 1


def _require_storable(value: Any) -> None:
    """Refuse what Postgres would refuse, so one record cannot stall its partition forever:
    a NUL character in any string, a timestamp without a time zone, NaN or infinity."""
    match value:
        case str() if "\x00" in value:
            raise ValueError("a text value contains a NUL character")
        case datetime() if value.tzinfo is None:
            raise ValueError("a timestamp has no time zone")
        case float() if not math.isfinite(value):
            raise ValueError("a number is NaN or infinite (JSON in Postgres cannot hold it)")
        case dict():
            for key, item in value.items():
                _require_storable(key)
                _require_storable(item)
        case list() | tuple():
            for item in value:
                _require_storable(item)


class ChangeConsumer:
    """Consumes tier changes and purchases into tasks, deliveries and enrolments, exactly once."""

    def __init__(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, pool: Pool, *,
        group_id: str, topics: Topics, playbooks: Playbooks, channels: ChannelConfig,
        clock: Clock, metrics: ActionsMetrics, max_records: int, poll_timeout_ms: int,
        on_effects: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.consumer, self.producer, self.pool = consumer, producer, pool
        self.group_id, self.topics, self.playbooks = group_id, topics, playbooks
        self.channels, self.clock, self.metrics = channels, clock, metrics
        self.max_records, self.poll_timeout_ms = max_records, poll_timeout_ms
        self.on_effects = on_effects
        # Per owned partition: the stored next offset our next commit expects (None: no row).
        self.fences: dict[TopicPartition, int | None] = {}
        self.needs_resync = False

    def listener(self) -> ConsumerRebalanceListener:
        """The rebalance listener to subscribe with."""
        return _Listener(self)

    async def step(self) -> bool:
        """Poll and apply one batch; True when records were handled."""
        try:
            return await self._step()
        except Fenced as exc:
            self.metrics.fenced_batches.inc()
            log.info("batch fenced; re-seeking to stored offsets", reason=str(exc))
            self.needs_resync = True
            return True
        except BaseException:
            self.needs_resync = True  # whatever happened, positions may be ahead of Postgres
            raise

    async def _step(self) -> bool:
        if self.needs_resync:
            await self.resync(self.consumer.assignment())
        batch = await self.consumer.getmany(
            timeout_ms=self.poll_timeout_ms, max_records=self.max_records
        )
        self._update_lag()
        if not batch:
            return False
        if self.needs_resync or any(tp not in self.fences for tp in batch):
            self.needs_resync = True  # fetched before our seek: drop it, resync first
            return True
        await self._process(batch)
        return True

    async def resync(self, partitions: Iterable[TopicPartition]) -> None:
        """Seek `partitions` to the offsets stored in Postgres (no row: the beginning)."""
        tps = sorted(partitions)
        async with self.pool.acquire() as conn:
            stored = await store.load_offsets(
                conn, self.group_id, [(t.topic, t.partition) for t in tps]
            )
        for tp in tps:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
            self.fences[tp] = offset
        self.needs_resync = False

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop state of revoked partitions."""
        for tp in partitions:
            self.fences.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def _process(self, batch: dict[TopicPartition, list[Record]]) -> None:
        started = asyncio.get_running_loop().time()
        records = [r for tp in sorted(batch) for r in batch[tp]]
        decoded = decode(records, self.topics, self.playbooks)
        await self._dead_letter(decoded.poison)
        expected = {tp: self.fences[tp] for tp in batch}
        moves = [
            OffsetMove(tp.topic, tp.partition, expected[tp], batch[tp][-1].offset + 1)
            for tp in sorted(batch)
        ]
        result = await apply_batch(
            self.pool, decoded.changes, decoded.goals, moves, group_id=self.group_id,
            playbooks=self.playbooks, channels=self.channels, now=self.clock.now(),
        )  # fmt: skip
        for move in moves:
            tp = TopicPartition(move.topic, move.partition)
            if self.fences.get(tp, -1) == expected[tp]:  # unless a rebalance re-seeked meanwhile
                self.fences[tp] = move.next_offset
        self._count(result, decoded)
        self.metrics.batch_size.observe(len(records))
        self.metrics.batch_duration.observe(asyncio.get_running_loop().time() - started)
        self.on_effects()

    async def _dead_letter(self, poison: Sequence[Poison]) -> None:
        """Write poison records to `<topic>.dlq` and wait for the broker's acks."""
        futures = []
        for item in poison:
            r = item.record
            value = r.value if r.value is not None else b""
            headers = dlq_headers(
                topic=r.topic, partition=r.partition, offset=r.offset, error=item.error,
                original=list(r.headers or ()),
            )  # fmt: skip
            if len(value) > DLQ_MAX_BYTES:
                value, headers = value[:DLQ_MAX_BYTES], [*headers, ("dlq_truncated", b"true")]
            dlq = Topics.dlq(r.topic)
            futures.append(await self.producer.send(dlq, value=value, key=r.key, headers=headers))
            self.metrics.dlq_records.labels(dlq).inc()
        if futures:
            await asyncio.gather(*futures)
            log.warning("records dead-lettered", count=len(poison), first_error=poison[0].error)

    def _count(self, result: BatchResult, decoded: Decoded) -> None:
        records = self.metrics.records
        records.labels("tier_changed", "processed").inc(result.fresh)
        records.labels("tier_changed", "duplicate").inc(result.duplicates)
        records.labels("purchases", "processed").inc(len(decoded.goals) + decoded.ignored)
        poisoned = Counter(self._source(p.record.topic) for p in decoded.poison)
        for source, n in poisoned.items():
            records.labels(source, "dead_lettered").inc(n)
        for (kind, playbook), n in result.planned.items():
            self.metrics.planned.labels(kind, playbook).inc(n)
        for sequence, n in result.enrolled.items():
            self.metrics.enrolments_started.labels(sequence).inc(n)
        for sequence, n in result.cancelled_steps.items():
            self.metrics.steps.labels(sequence, "cancelled").inc(n)

    def _source(self, topic: str) -> str:
        return "tier_changed" if topic == self.topics.tier_changed else "purchases"

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            high, committed = self.consumer.highwater(tp), self.fences.get(tp)
            if high is not None and tp in self.fences:
                lag = high - committed if committed is not None else high
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to the offsets stored in Postgres."""

    def __init__(self, owner: ChangeConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.owner.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        try:
            await self.owner.resync(assigned)
        except Exception as exc:  # Postgres away: the main loop retries before using them
            log.warning("cannot read stored offsets at assignment", error=repr(exc))
            self.owner.needs_resync = True
