"""shared/fenced_consumer.py with a real broker and Postgres: records handed out again below
the stored offset (the embedded broker was seen doing so) reach neither service's batches."""

from __future__ import annotations

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


async def test_records_handed_out_again_below_the_stored_offset_are_not_applied_again(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    tp = TopicPartition(f"{topic_namespace}.repeats", 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(tp.topic, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)  # fmt: skip
    pool = await create_pool(scorer_db, size=2, application_name="test")
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
        consumer.seek(tp, 0)  # the broker hands the records out again
        for _ in range(3):
            await applying.step()
    finally:
        await consumer.stop()
        await pool.close()
    assert applying.applied == [0, 1, 2]  # once each
    stored = "SELECT next_offset FROM scorer.consumer_offset WHERE group_id = 'g'"
    assert await count(scorer_db, stored) == 3  # not moved back
