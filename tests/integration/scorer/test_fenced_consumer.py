"""shared/fenced_consumer.py with a real broker and Postgres: records handed out again below
the stored offset (the embedded broker was seen doing so) reach neither service's batches,
and a high watermark low for a moment does not rewind the stored offset."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.scorer.db import create_pool
from services.scorer.metrics import scorer_metrics
from shared import offsets
from shared.fenced_consumer import Batch, FencedConsumer
from shared.metrics import new_registry
from tests.integration.scorer.support import count, wait_until


class Applying(FencedConsumer):
    """Applies a batch as the services do (a fenced offset move), noting its offsets."""

    applied: list[int]

    async def poll(self) -> Batch:
        batch: Batch = await self.consumer.getmany(timeout_ms=100)
        return batch

    async def handle(self, batch: Batch) -> None:
        moves = [offsets.OffsetMove(tp.topic, tp.partition, self.fences[tp], rs[-1].offset + 1)
                 for tp, rs in batch.items()]  # fmt: skip
        async with self.pool.acquire() as conn, conn.transaction():
            await offsets.advance_offsets(conn, self.schema, self.group_id, moves)
        for move, tp in zip(moves, batch, strict=True):
            self.fences[tp] = move.next_offset
        self.applied.extend(r.offset for records in batch.values() for r in records)


@contextlib.asynccontextmanager
async def _three_applied(
    database_url: str, bootstrap: str, topic: str
) -> AsyncIterator[tuple[AIOKafkaConsumer, Applying]]:
    """A partition of three records, all applied (stored next offset 3)."""
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(tp.topic, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)  # fmt: skip
    pool = await create_pool(database_url, size=2, application_name="test")
    await consumer.start()
    try:
        consumer.assign([tp])
        applying = Applying(consumer, pool, group_id="g", schema="scorer",
                            metrics=scorer_metrics(new_registry()))  # fmt: skip
        applying.applied = []
        await applying.resync([tp])

        async def applied_all() -> bool:
            await applying.step()
            return applying.applied == [0, 1, 2]

        await wait_until(applied_all)
        yield consumer, applying
    finally:
        await consumer.stop()
        await pool.close()


STORED = "SELECT next_offset FROM scorer.consumer_offset WHERE group_id = 'g'"


async def test_records_handed_out_again_below_the_stored_offset_are_not_applied_again(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    topic = f"{topic_namespace}.repeats"
    async with _three_applied(scorer_db, kafka_bootstrap, topic) as (consumer, applying):
        consumer.seek(TopicPartition(topic, 0), 0)  # the broker hands the records out again
        for _ in range(3):
            await applying.step()
    assert applying.applied == [0, 1, 2]  # once each
    assert await count(scorer_db, STORED) == 3  # not moved back


async def test_a_high_watermark_low_for_a_moment_does_not_rewind_the_stored_offset(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new leader's high watermark can trail the old one's: one such fetch rewound the
    # stored offset to the log's start, and the whole partition was read again (actions,
    # whose inbox is pruned, would act on old tier changes again).
    topic = f"{topic_namespace}.lagging"
    async with _three_applied(scorer_db, kafka_bootstrap, topic) as (consumer, applying):
        monkeypatch.setattr(consumer, "highwater", lambda tp: 1)  # a lagging leader answers
        for _ in range(3):
            await applying.step()
        assert await count(scorer_db, STORED) == 3
        monkeypatch.undo()
        for _ in range(3):
            await applying.step()
    assert applying.applied == [0, 1, 2]
    assert await count(scorer_db, STORED) == 3
