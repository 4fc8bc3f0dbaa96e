"""A best-effort copy of the Postgres offsets in the Kafka consumer group.

Postgres stays the source of truth: on assignment the consumer seeks to the offsets stored
there, never to the group's. The copy only lets lag-based tooling (KEDA's Kafka trigger,
`kafka-consumer-groups --describe`) see the real lag. So a commit runs in the background
after the Postgres commit, one at a time and always with the newest offsets, and a failed
one (a rebalance, a broker away) is logged and forgotten: the next batch commits a newer
offset anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter

from shared.logging import get_logger

log = get_logger(__name__)

COMMIT_TIMEOUT_S = 5.0  # aiokafka retries a retriable error forever: bound one attempt


class GroupCommitter:
    """Commits offsets already stored in Postgres to the consumer group, without waiting."""

    def __init__(
        self, consumer: AIOKafkaConsumer, *, timeout_s: float = COMMIT_TIMEOUT_S,
        failures: Counter | None = None,
    ) -> None:  # fmt: skip
        """`failures`: counts commits that failed (lag tooling then sees an older offset)."""
        self.consumer, self.timeout_s, self.failures = consumer, timeout_s, failures
        self.pending: dict[TopicPartition, int] = {}
        self.task: asyncio.Task[None] | None = None

    def offer(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit these next offsets soon (call only after they are committed in Postgres)."""
        self.pending.update(offsets)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._commit_pending(), name="group-commit")

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop offsets of revoked partitions (their new owner commits them)."""
        for tp in partitions:
            self.pending.pop(tp, None)

    async def close(self) -> None:
        """Stop committing (before the consumer stops)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _commit_pending(self) -> None:
        while self.pending:
            assigned = self.consumer.assignment()
            offsets = {
                tp: OffsetAndMetadata(offset, "")
                for tp, offset in self.pending.items()
                if tp in assigned
            }
            self.pending = {}
            if offsets:
                await self._commit(offsets)

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), self.timeout_s)
        except Exception as exc:  # informational only: Postgres holds the offsets that count
            if self.failures is not None:
                self.failures.inc()
            log.info(
                "consumer group commit failed; the next batch commits again",
                partitions=len(offsets), error=repr(exc),
            )  # fmt: skip
