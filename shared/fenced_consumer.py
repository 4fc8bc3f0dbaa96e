"""The Kafka side of effectively-once consuming, shared by the scorer and actions.

Offsets live in Postgres, not in the consumer group: on assignment the consumer seeks to
the stored offsets, and each batch's transaction advances them with a fenced update
(shared/offsets.py). A batch refused by the fence, a batch fetched before a seek, or any
failure marks the positions stale: the next step re-seeks before it polls again.
Subclasses say how a batch is polled and what is done with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from shared import offsets
from shared.group_commit import GroupCommitter
from shared.logging import get_logger
from shared.offsets import Fenced
from shared.pg import Pool

log = get_logger(__name__)
Batch = dict[TopicPartition, list[Any]]  # aiokafka ConsumerRecords per partition


class ConsumerMetrics(Protocol):
    """The two metrics every fenced consumer keeps."""

    @property
    def fenced_batches(self) -> Any: ...

    @property
    def consumer_lag(self) -> Any: ...


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
    ) -> None:
        self.consumer, self.pool, self.group_id = consumer, pool, group_id
        self.schema, self.fence_metrics = schema, metrics
        self.group_commits = GroupCommitter(consumer)
        # Per owned partition: the stored next offset our next commit expects (None: no row).
        self.fences: dict[TopicPartition, int | None] = {}
        self.needs_resync = False

    async def poll(self) -> Batch:
        """Fetch the next batch (subclasses choose batch size and waiting)."""
        raise NotImplementedError

    async def handle(self, batch: Batch) -> None:
        """Apply a batch of owned, correctly positioned partitions (one transaction or more)."""
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
            await self.resync(self.consumer.assignment())
        batch = await self.poll()
        self._update_lag()
        if not batch:
            return False
        if self.needs_resync or any(tp not in self.fences for tp in batch):
            self.needs_resync = True  # fetched before our seek: drop it, resync first
            return True
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
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
            self.fences[tp] = offset
        self.needs_resync = False

    async def close(self) -> None:
        """Stop background group commits (call before the Kafka consumer stops)."""
        await self.group_commits.close()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop state of revoked partitions."""
        partitions = list(partitions)
        self.group_commits.forget(partitions)
        for tp in partitions:
            self.fences.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.fence_metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def records_behind(self) -> int | None:
        """Records not yet applied on this consumer's partitions; None until it owns some and
        has heard each one's end from the broker (after its first fetch)."""
        assignment = self.consumer.assignment()
        if not assignment:
            return None
        behind = 0
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None or tp not in self.fences:
                return None
            behind += max(0, high - (self.fences[tp] or 0))
        return behind

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            high, committed = self.consumer.highwater(tp), self.fences.get(tp)
            if high is not None and tp in self.fences:
                lag = high - committed if committed is not None else high
                self.fence_metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))


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
        try:
            await self.owner.resync(assigned)
        except Exception as exc:  # Postgres away: the main loop retries before using them
            log.warning("cannot read stored offsets at assignment", error=repr(exc))
            self.owner.needs_resync = True
