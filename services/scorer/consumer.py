"""The event consumer: batches from Kafka -> decode (poison to the DLQ) -> `apply_batch`.

Offsets live in Postgres, not in the consumer group: on assignment we seek to the stored
offsets, and every batch advances them with a fenced update in the batch's transaction.
Order of a batch: dead-letter the poison records (acked), then one transaction for the
state, the outbox and the offsets; only then is anything counted as done.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.scorer import store
from services.scorer.batch import BatchResult, apply_batch
from services.scorer.db import Pool
from services.scorer.dead_letters import decode, traceparent_of
from services.scorer.evaluation import ChangeRecord, CustomerFailed, Scoring
from services.scorer.metrics import ScorerMetrics
from services.scorer.polling import Batch, gather_batch, split_lanes
from services.scorer.state_cache import StateCache
from shared.clock import Clock
from shared.contracts import ChangeCause
from shared.dead_letters import Poison, Record
from shared.domain.state import Event, fold
from shared.fenced_consumer import FencedConsumer
from shared.gcpause import gc_paused
from shared.logging import get_logger
from shared.offsets import OffsetMove, move_past
from shared.topics import event_type_of

log = get_logger(__name__)


class EventConsumer(FencedConsumer):
    """Consumes the three event topics into customer state, effectively once.

    With `publish` (the relay's drain) each batch's committed changes go out from this
    task before the next batch; `on_changes` (waking the relay loop) is called instead when
    there is no `publish`, or when it failed.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: Pool,
        *,
        group_id: str,
        scoring: Callable[[], Scoring],
        clock: Clock,
        metrics: ScorerMetrics,
        max_records: int,
        poll_timeout_ms: int,
        linger_ms: int = 0,
        lanes: int = 1,
        state_cache_size: int = 0,
        on_changes: Callable[[], None] = lambda: None,
        publish: Callable[[], Awaitable[object]] | None = None,
        max_message_bytes: int = 1_048_588,
    ) -> None:
        super().__init__(consumer, pool, group_id=group_id, schema="scorer", metrics=metrics,
                         max_message_bytes=max_message_bytes)  # fmt: skip
        self.producer, self.scoring, self.clock, self.metrics = producer, scoring, clock, metrics
        self.max_records, self.poll_timeout_ms = max_records, poll_timeout_ms
        self.linger_ms, self.lanes, self.on_changes = linger_ms, lanes, on_changes
        self.cache = StateCache(state_cache_size) if state_cache_size > 0 else None
        self.publish = publish

    async def step(self) -> bool:
        """Poll and apply one batch with the cyclic GC paused from the poll to the publish.

        The collector then runs once the step is over, when the fetched records and the
        batch's temporaries are gone and only what the batch left alive (the state cache)
        is young. Paused for the batch alone, it ran several young collections per batch
        inside the poll, each walking the records just fetched: 1.1-1.8 s of young and
        middle collections per bench drain against 0.2-0.35 s (docs/performance-log.md,
        twelfth pass).
        """
        with gc_paused():
            return await super().step()

    async def poll(self) -> Batch:
        """Gather records across partitions up to the batch size or the linger time."""
        return await gather_batch(
            self.consumer, max_records=self.max_records, wait_ms=self.poll_timeout_ms,
            linger_ms=self.linger_ms,
        )  # fmt: skip

    async def handle(self, batch: Batch) -> None:
        """Apply the batch and publish its changes."""
        changes = await self._process(batch)
        if changes and self.publish is not None:
            await self._publish_now(self.publish)

    async def _publish_now(self, publish: Callable[[], Awaitable[object]]) -> None:
        """Publish the batch's committed changes from this task, before the next batch.

        Left to the relay's own loop, they waited for it to get the event loop between
        this task's long CPU-bound stretches (most of the end-to-end latency under load).
        The relay keeps its order and its lock; a failure leaves the rows to its loop.
        """
        try:
            if await publish() is False:
                self.on_changes()  # another round held the lock: it may have missed them
        except Exception as exc:  # committed already: the relay loop retries them
            self.metrics.loop_errors.labels("relay").inc()
            log.warning(
                "publishing after the batch failed; the relay loop retries", error=repr(exc)
            )
            self.on_changes()

    async def _process(self, batch: Batch) -> int:
        """Apply a batch as up to `lanes` concurrent transactions over disjoint partitions.

        While one lane waits for Postgres, the next lane's Python work runs: the two
        overlap instead of taking turns. A lane that fails leaves the others committed;
        the error then makes the consumer re-seek to the stored offsets.
        """
        started = asyncio.get_running_loop().time()
        lanes = split_lanes(batch, self.lanes)
        results = await asyncio.gather(
            *(self._process_lane(lane) for lane in lanes), return_exceptions=True
        )
        elapsed = asyncio.get_running_loop().time() - started
        records = sum(len(records) for records in batch.values())
        self.metrics.batch_size.observe(records)
        self.metrics.batch_duration.observe(elapsed)
        log.debug(
            "batch committed", records=records, partitions=len(batch), lanes=len(lanes),
            changes=sum(r for r in results if isinstance(r, int)), seconds=round(elapsed, 3),
        )  # fmt: skip
        failures = [r for r in results if isinstance(r, BaseException)]
        for other in failures[1:]:  # the first is raised (and logged by the loop)
            log.warning("another lane of the batch failed too", error=repr(other))
        if failures:
            raise failures[0]
        return sum(r for r in results if isinstance(r, int))

    async def _process_lane(self, batch: Batch) -> int:
        """Decode, dead-letter, apply in one transaction; returns the changes decided."""
        records = [r for tp in sorted(batch) for r in batch[tp]]
        decoded, poison = decode(records)
        # Before the dead letters' acks are awaited: a rebalance meanwhile drops revoked
        # partitions' fences (KeyError here, a loop error and the lane read again). The
        # apply is fenced in Postgres against these offsets, as for any zombie.
        expected = {tp: self.fences[tp] for tp in batch}
        await self._dead_letter(poison)
        moves = [
            move_past(tp.topic, tp.partition, expected[tp], batch[tp][-1]) for tp in sorted(batch)
        ]
        quarantined: list[Poison] = []
        result = await self._apply(decoded, moves, quarantined)
        for move in moves:
            tp = TopicPartition(move.topic, move.partition)
            if self.fences.get(tp, -1) == expected[tp]:  # unless a rebalance re-seeked meanwhile
                self.fences[tp] = move.next_offset
        self.group_commits.offer(
            {TopicPartition(m.topic, m.partition): m.next_offset for m in moves}
        )
        self._count(result.outcomes, poison, quarantined, result.changes)
        if result.cut_short:
            self.metrics.count_cut_short(ChangeCause.EVENT, result.cut_short)
        self._wake_relay_for(len(result.changes))
        return len(result.changes)

    def _wake_relay_for(self, changes: int) -> None:
        # With `publish` this task sends the changes itself after the batch: waking the
        # relay loop as well made a second relay round per batch, mostly finding nothing.
        if changes and self.publish is None:
            self.on_changes()

    async def _apply(
        self, decoded: list[tuple[Event, Record]], moves: list[OffsetMove],
        quarantined: list[Poison],
    ) -> BatchResult:  # fmt: skip
        """apply_batch; a customer the domain rejects is dead-lettered (added to
        `quarantined`: valid events, held back by a fault of the scorer or its rules) and the
        rest retried."""
        while True:
            events = [event for event, _ in decoded]
            try:
                return await apply_batch(
                    self.pool, events, moves, group_id=self.group_id, scoring=self.scoring(),
                    now=self.clock.now(), trace_of=trace_lookup(decoded), cache=self.cache,
                )  # fmt: skip
            except CustomerFailed as failed:
                mine = [(e, r) for e, r in decoded if e.customer_id == failed.customer_id]
                culprit = await self._culprit(failed.customer_id, [e for e, _ in mine])
                bad = {id(e) for e, _ in mine if culprit is None or e is culprit}
                rejected = [Poison(r, failed.error) for e, r in mine if id(e) in bad]
                log.error("customer's events quarantined", error=failed.error,
                          events=len(rejected), of=len(mine))  # fmt: skip
                log.debug("quarantined customer", customer_id=failed.customer_id)
                await self._dead_letter(rejected)
                quarantined.extend(rejected)
                decoded = [(e, r) for e, r in decoded if id(e) not in bad]

    async def _culprit(self, customer_id: str, events: list[Event]) -> Event | None:
        """The first of a customer's events that cannot be folded into its stored state, in
        order: only it is quarantined, and the customer's other events are applied. None
        when every one folds (the failure is in classifying the customer): all go."""
        if len(events) < 2:
            return None
        async with self.pool.acquire() as conn:
            record = await store.read_customer(conn, customer_id)
        now = self.clock.now()
        for event in events:
            try:
                fold(record.state, event, now=now)
            except Exception:  # what made fold_batch raise CustomerFailed
                return event
        return None

    async def _dead_letter(self, poison: Sequence[Poison]) -> None:
        await self.write_dead_letters(self.producer, poison)

    def _count(
        self,
        outcomes: dict[tuple[str, str], int],
        poison: Sequence[Poison],
        quarantined: Sequence[Poison],
        changes: Sequence[ChangeRecord],
    ) -> None:
        for (event_type, outcome), n in outcomes.items():
            if n:
                self.metrics.events.labels(event_type, outcome).inc(n)
        # A dead letter's type is its topic's: its body may not say (or lie).
        for outcome, letters in (("dead_lettered", poison), ("quarantined", quarantined)):
            for event_type, n in Counter(_type_of(p) for p in letters).items():
                self.metrics.events.labels(event_type, outcome).inc(n)
        self.metrics.count_transitions(changes)
        if self.cache is not None:
            counts = self.cache.drain_counts()
            for result, n in (("hit", counts.hits), ("miss", counts.misses),
                              ("stale", counts.stale)):  # fmt: skip
                if n:
                    self.metrics.state_cache.labels(result).inc(n)


def trace_lookup(decoded: Sequence[tuple[Event, Record]]) -> Callable[[Event], str | None]:
    """The trace context each event's record carried (headers read only when asked).

    Asked only for events whose customer changed class: the look-up table is built on the
    first question, not for every batch.
    """
    record_of: dict[str, Record] = {}

    def trace_of(event: Event) -> str | None:
        if not record_of:
            record_of.update((e.event_id, record) for e, record in decoded)
        return traceparent_of(record_of[event.event_id])

    return trace_of


def _type_of(poison: Poison) -> str:
    return event_type_of(poison.record.topic) or "unknown"
