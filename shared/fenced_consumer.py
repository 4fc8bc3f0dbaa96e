"""The Kafka side of effectively-once consuming, shared by the scorer and actions.

Offsets live in Postgres, not in the consumer group: on assignment the consumer seeks to
the stored offsets, and each batch's transaction advances them with a fenced update
(shared/offsets.py). A batch refused by the fence, a batch fetched before a seek, or any
failure marks the positions stale: the next step re-seeks before it polls again.
Subclasses say how a batch is polled and what is done with it.
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
        if batch := drop_repeats(batch, self.fences):
            await self.handle(batch)
        return True

    async def resync(self, partitions: Iterable[TopicPartition]) -> None:
        """Seek `partitions` to the offsets stored in Postgres (no row: the beginning)."""
        tps = sorted(partitions)
        async with self.pool.acquire() as conn:
            stored = await offsets.load_offsets(
                conn, self.schema, self.group_id, [(t.topic, t.partition) for t in tps]
            )
        for tp in tps:
            offset = stored.get((tp.topic, tp.partition))
            self.starts.pop(tp, None)
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
            self.fences[tp] = offset
        self.needs_resync = False

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
            if await self.consumer.position(tp) < fence or (
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
        for tp in assigned:  # at 0 from now on, so increase() sees a first rewind
            self.owner.fence_metrics.offsets_rewound.labels(tp.topic, str(tp.partition))
        try:
            await self.owner.resync(assigned)
        except Exception as exc:  # Postgres away: the main loop retries before using them
            log.warning("cannot read stored offsets at assignment", error=repr(exc))
            self.owner.needs_resync = True
