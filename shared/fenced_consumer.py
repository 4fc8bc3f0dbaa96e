"""The Kafka side of effectively-once consuming, shared by the scorer and actions.

Offsets live in Postgres, not in the consumer group: on assignment the consumer seeks to
the stored offsets, and each batch's transaction advances them with a fenced update
(shared/offsets.py). A batch refused by the fence, a batch fetched before a seek, or any
failure marks the positions stale: the next step re-seeks before it polls again.
Subclasses say how a batch is polled and what is done with it.

The first records fetched for a partition after a seek are checked against what was stored
(`_check_first_records`): a log that starts past the stored offset (retention deleted the
records, a new log that starts later) or that holds another record where the last one
applied was (a topic created again, another cluster, grown past the stored offset) has
records this consumer will never read. They are counted (`*_offsets_skipped_total`) and
logged, and the consumer goes on from where the log is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from shared import offsets
from shared.dead_letters import Poison, dead_letter
from shared.group_commit import GroupCommitter
from shared.logging import get_logger
from shared.offsets import Fenced, OffsetMove
from shared.pg import Pool

log = get_logger(__name__)
Batch = dict[TopicPartition, list[Any]]  # aiokafka ConsumerRecords per partition
# How long a log must stay short of a partition's stored offset before the offset is taken
# for one past the log's end (a lagging leader's high watermark catches up far sooner).
REWIND_AFTER_S = 5.0
# The help of each service's `*_offsets_rewound_total{topic, partition}`.
OFFSETS_REWOUND_HELP = (
    "Times a partition's stored offset was past the log's end (a broker that kept nothing,"
    " a topic created again, another cluster) and its next offset was set to the log's start:"
    " the partition is read again, and the inbox drops what was applied before."
)

# Why records were skipped (the `cause` of the log line).
LOG_STARTS_PAST = "the log starts past the stored offset"
ANOTHER_LOG = "another log: the record before the stored offset is not the one applied"
# The help of each service's `*_offsets_skipped_total{topic, partition}`.
OFFSETS_SKIPPED_HELP = (
    "Records of a partition this consumer will never read, found at the first fetch after a"
    " seek to the stored offset: the log started past it (retention deleted them, or a new"
    " log), or the record before it was not the one applied (a topic created again, another"
    " cluster, that had grown past it). Lost to this service unless they are sent again."
)

GROUP_COMMIT_FAILURES_HELP = (
    "Copies of the Postgres offsets to the Kafka consumer group that failed (a rebalance, the"
    " broker away); the next batch commits again. Only lag tooling reading the group (KEDA's"
    " kafka trigger) sees an older offset meanwhile."
)
FETCH_AGE_HELP = (
    "Seconds since the broker last answered this process's fetch for the partition (its end"
    " was last heard); grows while the broker is unreachable, when the lag stops moving."
)


class ConsumerMetrics(Protocol):
    """The metrics every fenced consumer keeps."""

    @property
    def fenced_batches(self) -> Any: ...

    @property
    def consumer_lag(self) -> Any: ...

    @property
    def fetch_age(self) -> Any: ...

    @property
    def group_commit_failures(self) -> Any: ...

    @property
    def offsets_rewound(self) -> Any: ...

    @property
    def offsets_skipped(self) -> Any: ...


class FencedConsumer:
    """Seeks to Postgres offsets, fences batches, mirrors offsets to the group, exports lag."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        pool: Pool,
        *,
        group_id: str,
        schema: str,
        metrics: ConsumerMetrics,
        max_message_bytes: int = 1_048_588,
    ) -> None:
        """`max_message_bytes`: the brokers' limit (KAFKA_MAX_MESSAGE_BYTES), which a dead
        letter is cut to fit."""
        self.consumer, self.pool, self.group_id = consumer, pool, group_id
        self.schema, self.fence_metrics = schema, metrics
        self.max_message_bytes = max_message_bytes
        self.group_commits = GroupCommitter(consumer, failures=metrics.group_commit_failures)
        # Per owned partition: the stored next offset our next commit expects (None: no row).
        self.fences: dict[TopicPartition, int | None] = {}
        # Per owned partition without a stored offset: the log's start (the lag counts from it).
        self.starts: dict[TopicPartition, int] = {}
        self.needs_resync = False
        # Per partition whose log ends before its stored offset: since when (monotonic).
        self._short_since: dict[TopicPartition, float] = {}
        # Per partition sought to a stored offset whose first records are not fetched yet.
        self._sought: dict[TopicPartition, _Sought] = {}
        self._gauges: dict[TopicPartition, tuple[Any, Any]] = {}  # lag, fetch age

    async def write_dead_letters(
        self, producer: AIOKafkaProducer, poison: Sequence[Poison]
    ) -> list[str]:
        """Poison records to their `<topic>.dlq`, acknowledged, signed with this group and
        cut to the brokers' limit; the DLQ topic of each, in order."""
        if not poison:
            return []
        return await dead_letter(producer, poison, group_id=self.group_id,
                                 max_message_bytes=self.max_message_bytes)  # fmt: skip

    async def poll(self) -> Batch:
        """Fetch the next batch (subclasses choose batch size and waiting)."""
        raise NotImplementedError

    async def handle(self, batch: Batch) -> None:
        """Apply a batch of owned, correctly positioned partitions (one transaction or more),
        each partition's records from its stored offset on, every offset once."""
        raise NotImplementedError

    def listener(self) -> ConsumerRebalanceListener:
        """The rebalance listener to subscribe with."""
        return _Listener(self)

    async def step(self) -> bool:
        """Poll and apply one batch; True when records were handled."""
        try:
            return await self._step()
        except Fenced as exc:
            self.fence_metrics.fenced_batches.inc()
            log.info("batch fenced; re-seeking to stored offsets", reason=str(exc))
            self.needs_resync = True
            return True
        except BaseException:
            self.needs_resync = True  # whatever happened, positions may be ahead of Postgres
            raise

    async def _step(self) -> bool:
        if self.needs_resync:
            try:
                await self.resync(self.consumer.assignment())
            except Exception:
                await self._lag_while_failing()
                raise
        batch = await self.poll()
        if await self._rewind_past_log_end():
            self.needs_resync = True  # read from the rewound offsets on: drop this batch
            return True
        self._update_lag()
        if not batch:
            return False
        if self.needs_resync or any(tp not in self.fences for tp in batch):
            self.needs_resync = True  # fetched before our seek: drop it, resync first
            return True
        if self._sought:  # only until a partition's first records after a seek came
            await self._check_first_records(batch)
        if batch := drop_repeats(batch, self.fences):
            await self.handle(batch)
        return True

    async def resync(self, partitions: Iterable[TopicPartition]) -> None:
        """Seek `partitions` to the offsets stored in Postgres (no row: the beginning).

        With the timestamp of the last record applied stored too, the seek is to that record
        (one before the stored offset): its first fetch tells whether the log is still the
        one the offset was read from. `drop_repeats` keeps it from the batch."""
        tps = sorted(partitions)
        async with self.pool.acquire() as conn:
            stored = await offsets.load_offsets(
                conn, self.schema, self.group_id, [(t.topic, t.partition) for t in tps]
            )
        for tp in tps:
            found = stored.get((tp.topic, tp.partition))
            self.starts.pop(tp, None)
            self._sought.pop(tp, None)
            if found is None:
                await self.consumer.seek_to_beginning(tp)
                self.fences[tp] = None
                continue
            sought = _Sought.of(found)
            self.consumer.seek(tp, sought.offset)
            self._sought[tp] = sought
            self.fences[tp] = found.next_offset
        self.needs_resync = False

    async def _check_first_records(self, batch: Batch) -> None:
        """Count and log the records skipped by partitions whose first records since their
        seek to a stored offset are in `batch`, and store where they go on from.

        These topics are neither compacted nor transactional: the first record fetched after
        a seek to offset N is N. One above it means the log no longer holds N (retention
        deleted it, or the log was replaced by one that starts later; the fetch fell back to
        the log's start, `auto_offset_reset`): the records from N up to it are gone. The
        record at N - 1 with another timestamp than the one applied means another log (a
        topic created again, another cluster) that has grown past N: its records below N
        will not be read. Either way the consumer goes on from where the log is, as it
        would have without the check (the records below are gone, or belong to a log the
        operator may choose to read again: docs/OPERATIONS.md, TierstreamOffsetsSkipped),
        and the new position is stored at once, so that the skip counts once.
        """
        skips: list[_Skip] = []
        for tp in [tp for tp in self._sought if tp in batch]:
            sought = self._sought[tp]
            first = next((r for r in batch[tp] if r.offset >= sought.offset), None)
            if first is None:  # records below the seek only (repeats): wait for more
                continue
            del self._sought[tp]
            stamp = offsets.record_time(first)
            if first.offset > sought.stored:
                gap = first.offset - sought.stored
                skips.append(
                    _Skip(tp, sought.stored, first.offset, first.offset, gap, LOG_STARTS_PAST)
                )
            elif first.offset == sought.offset and sought.timestamp_ms not in (None, stamp):
                skips.append(
                    _Skip(tp, sought.stored, first.offset, sought.stored, None, ANOTHER_LOG, stamp)
                )
        if skips:
            await self._store_skips(skips)

    async def _store_skips(self, skips: Sequence[_Skip]) -> None:
        """Store where each skipping partition goes on from, then count and log the skip."""
        replaced = [skip.tp for skip in skips if skip.skipped is None]
        starts = await self.consumer.beginning_offsets(replaced) if replaced else {}
        moves = [OffsetMove(s.tp.topic, s.tp.partition, self.fences[s.tp], s.next_offset, s.stamp)
                 for s in skips]  # fmt: skip
        async with self.pool.acquire() as conn, conn.transaction():
            await offsets.advance_offsets(conn, self.schema, self.group_id, moves)
        for skip in skips:
            self.fences[skip.tp] = skip.next_offset
            skipped = skip.skipped
            if skipped is None:  # another log: its records below the stored offset
                skipped = max(0, skip.stored - starts.get(skip.tp, 0))
            log.error(
                "records skipped: the log does not hold the stored offset", topic=skip.tp.topic,
                partition=skip.tp.partition, stored=skip.stored, first=skip.first,
                skipped=skipped, cause=skip.cause, next_offset=skip.next_offset,
            )  # fmt: skip
            if skipped:
                labels = (skip.tp.topic, str(skip.tp.partition))
                self.fence_metrics.offsets_skipped.labels(*labels).inc(skipped)

    async def _lag_while_failing(self) -> None:
        """Keep the lag current while the stored offsets cannot be read (Postgres away).

        A partition is fetched again, and its high watermark heard, only once the records
        fetched for it are taken: take them and drop them (the next resync seeks back to the
        stored offsets), or the lag would stay as it was when the outage began.
        """
        with contextlib.suppress(Exception):
            await self.consumer.getmany(timeout_ms=0)
        self._update_lag()

    async def _rewind_past_log_end(self) -> bool:
        """Store the log's start as the next offset of partitions whose stored offset is past
        the log's end; True if there were any.

        The database outlived the log: a broker that keeps nothing (the embedded one started
        again), a topic deleted and created again, a move to another cluster, a log cut short
        by an unclean leader election. The consumer's fetch position falls back to the log's
        start (auto_offset_reset), but every record below the stored offset would be taken
        for one already applied, and the lag would read 0: nothing consumed, nothing said.
        Read again from the start, what was applied before is dropped by the inbox. The
        high watermark a fetch reports, not `end_offsets()`, which some brokers under-report,
        and only once the fetch position fell back below the stored offset.
        """
        ahead = []
        for tp in sorted(self.consumer.assignment()):
            fence, high = self.fences.get(tp), self.consumer.highwater(tp)
            if fence is None or high is None or high >= fence:
                self._short_since.pop(tp, None)
                continue
            # One fetch reporting a lower high watermark is no proof: a new leader's can trail
            # the old one's for a moment, and a rewind reads the whole partition again. Proof:
            # the broker refused the stored offset (Kafka: the fetch position fell back to the
            # log's start), or the log stayed short of it for REWIND_AFTER_S (a broker that
            # answers an offset past the end with nothing, as the embedded one does).
            since = self._short_since.setdefault(tp, time.monotonic())
            sought = self._sought.get(tp)  # one before the stored offset, to check its record
            if await self.consumer.position(tp) < (sought.offset if sought else fence) or (
                time.monotonic() - since >= REWIND_AFTER_S
            ):
                ahead.append((tp, fence, high))
        if not ahead:
            return False
        starts = await self.consumer.beginning_offsets([tp for tp, _, _ in ahead])
        moves = [OffsetMove(tp.topic, tp.partition, fence, starts[tp]) for tp, fence, _ in ahead]
        async with self.pool.acquire() as conn, conn.transaction():
            await offsets.advance_offsets(conn, self.schema, self.group_id, moves)
        for (tp, fence, high), move in zip(ahead, moves, strict=True):
            self._short_since.pop(tp, None)
            log.error(
                "stored offset past the log's end; reading the partition again from its start",
                topic=tp.topic, partition=tp.partition, stored=fence, log_end=high,
                start=move.next_offset,
            )  # fmt: skip
            self.fence_metrics.offsets_rewound.labels(tp.topic, str(tp.partition)).inc()
        return True

    async def close(self) -> None:
        """Stop background group commits (call before the Kafka consumer stops)."""
        await self.group_commits.close()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop state of revoked partitions."""
        partitions = list(partitions)
        self.group_commits.forget(partitions)
        for tp in partitions:
            self.fences.pop(tp, None)
            self.starts.pop(tp, None)
            self._short_since.pop(tp, None)
            self._sought.pop(tp, None)
            self._gauges.pop(tp, None)
            for gauge in (self.fence_metrics.consumer_lag, self.fence_metrics.fetch_age):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))

    def group_generation(self) -> int | None:
        """The consumer group generation this consumer last joined (None before it joined)."""
        return group_generation(self.consumer)

    async def progress(self) -> list[PartitionLag]:
        """Each owned partition whose end this consumer has heard: records not yet applied,
        and how long ago the end was heard."""
        now_ms = time.time() * 1000
        lags = []
        for tp in sorted(self.consumer.assignment()):
            high, heard_ms = self.consumer.highwater(tp), self.consumer.last_poll_timestamp(tp)
            if high is None or heard_ms is None or tp not in self.fences:
                continue
            applied = await self._applied(tp)
            age_s = max(0.0, (now_ms - heard_ms) / 1000)
            lags.append(PartitionLag(tp.topic, tp.partition, max(0, high - applied), age_s))
        return lags

    async def _applied(self, tp: TopicPartition) -> int:
        """The next offset to apply: the stored one, or the log's start when there is none
        (its records may be gone to retention, and nothing before the start is unread)."""
        fence = self.fences.get(tp)
        if fence is not None:
            return fence
        if tp not in self.starts:
            self.starts[tp] = (await self.consumer.beginning_offsets([tp]))[tp]
        return self.starts[tp]

    def _update_lag(self) -> None:
        # Called after every poll, empty ones too: while the broker is away the lag keeps
        # its last value (nothing new is heard) but the fetch age grows.
        now_ms = time.time() * 1000
        for tp in self.consumer.assignment():
            if tp not in self.fences:  # not ours (yet, or any more): no series of it
                continue
            lag, age = self._gauges_of(tp)
            if (high := self.consumer.highwater(tp)) is not None:
                applied = self.fences[tp]
                applied = applied if applied is not None else self.starts.get(tp, 0)
                lag.set(max(0, high - applied))
            if (heard_ms := self.consumer.last_poll_timestamp(tp)) is not None:
                age.set(max(0.0, (now_ms - heard_ms) / 1000))

    def _gauges_of(self, tp: TopicPartition) -> tuple[Any, Any]:
        """The partition's lag and fetch-age gauges, looked up once while it is owned (a
        labels() call takes a lock and builds a key: twice a partition on every poll
        otherwise). Created only once a batch may be applied to it, so a series `forget`
        removed on revocation does not come back."""
        if (found := self._gauges.get(tp)) is None:
            labels = (tp.topic, str(tp.partition))
            found = self._gauges[tp] = (
                self.fence_metrics.consumer_lag.labels(*labels),
                self.fence_metrics.fetch_age.labels(*labels),
            )
        return found


def group_generation(consumer: AIOKafkaConsumer) -> int | None:
    """The group generation `consumer` last joined (None before it joined, or without a group).

    aiokafka keeps it on its coordinator only (no public accessor): a report stamped with it
    can be told from one a member wrote before the last rebalance. Brokers count from 0 or
    1 (tansu from 0); aiokafka holds -1 until a join succeeds."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    return generation if isinstance(generation, int) and generation >= 0 else None


def drop_repeats(batch: Batch, floors: Mapping[TopicPartition, int | None]) -> Batch:
    """Each partition's records from its floor on, every offset once, in offset order.

    The embedded broker with a short fetch wait was seen handing records out a second
    time (a fetch answered again from the start of a stored record batch). Records below
    the stored next offset are already applied; a repeat inside a batch would be counted
    and dead-lettered twice and would move the stored offset backwards.
    """
    kept: Batch = {}
    for tp, records in batch.items():
        next_offset, fresh = floors.get(tp) or 0, []
        for record in records:
            if record.offset >= next_offset:
                fresh.append(record)
                next_offset = record.offset + 1
        if fresh:
            kept[tp] = fresh
    return kept


@dataclass(frozen=True, slots=True)
class _Sought:
    """Where a partition was sought: `offset`, the stored one (`stored`) or, when the
    timestamp of the record before it was stored (`timestamp_ms`), that record's."""

    offset: int
    stored: int
    timestamp_ms: int | None

    @classmethod
    def of(cls, found: offsets.StoredOffset) -> _Sought:
        if found.last_timestamp_ms is None or found.next_offset <= 0:
            return cls(found.next_offset, found.next_offset, None)
        return cls(found.next_offset - 1, found.next_offset, found.last_timestamp_ms)


@dataclass(frozen=True, slots=True)
class _Skip:
    """Records of a partition that will not be read: from its stored offset `stored` (or the
    log's start, for another log) on; `first` read, `next_offset` where it goes on from."""

    tp: TopicPartition
    stored: int
    first: int
    next_offset: int
    skipped: int | None  # None: another log, whose start says how many
    cause: str
    stamp: int | None = None  # another log: the timestamp of its record before `stored`


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far a consumer is through one of its partitions."""

    topic: str
    partition: int
    behind: int
    heard_age_s: float


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to the offsets stored in Postgres."""

    def __init__(self, owner: FencedConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.owner.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info(
            "partitions assigned", partitions=sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )
        for tp in assigned:  # at 0 from now on, so increase() sees a first rewind or skip
            self.owner.fence_metrics.offsets_rewound.labels(tp.topic, str(tp.partition))
            self.owner.fence_metrics.offsets_skipped.labels(tp.topic, str(tp.partition))
        try:
            await self.owner.resync(assigned)
        except Exception as exc:  # Postgres away: the main loop retries before using them
            log.warning("cannot read stored offsets at assignment", error=repr(exc))
            self.owner.needs_resync = True
