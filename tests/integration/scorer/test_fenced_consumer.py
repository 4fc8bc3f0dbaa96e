"""shared/fenced_consumer.py with a real broker and Postgres: records handed out again below
the stored offset (the embedded broker was seen doing so) reach neither service's batches,
a high watermark low for a moment does not rewind the stored offset, and records a log no
longer holds at the stored offset are counted and logged as skipped."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.scorer.db import create_pool
from services.scorer.metrics import scorer_metrics
from shared import offsets
from shared.fenced_consumer import ANOTHER_LOG, LOG_STARTS_PAST, Batch, FencedConsumer
from shared.metrics import new_registry
from tests.integration.scorer.support import connect, count, wait_until
from tests.support.infra import recreate_topic


class Applying(FencedConsumer):
    """Applies a batch as the services do (a fenced offset move past the batch's last record,
    its timestamp stored), noting its offsets."""

    applied: list[int]

    async def poll(self) -> Batch:
        batch: Batch = await self.consumer.getmany(timeout_ms=100)
        return batch

    async def handle(self, batch: Batch) -> None:
        moves = [offsets.move_past(tp.topic, tp.partition, self.fences[tp], rs[-1])
                 for tp, rs in batch.items()]  # fmt: skip
        async with self.pool.acquire() as conn, conn.transaction():
            await offsets.advance_offsets(conn, self.schema, self.group_id, moves)
        for move, tp in zip(moves, batch, strict=True):
            self.fences[tp] = move.next_offset
        self.applied.extend(r.offset for records in batch.values() for r in records)

    async def applies(self, expected: list[int]) -> bool:
        """One step; whether the offsets applied are now `expected`."""
        await self.step()
        return self.applied == expected


async def _produce(bootstrap: str, topic: str, records: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(records):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def _consuming(
    database_url: str, bootstrap: str, topic: str, registry: CollectorRegistry, log_start: int = 0
) -> AsyncIterator[tuple[AIOKafkaConsumer, Applying]]:
    """A consumer of the topic's partition 0, sought to its stored offset.

    `log_start`: where a broker whose log starts there (retention deleted what was below)
    sends a fetch below it (`auto_offset_reset` earliest). The embedded broker cannot delete
    records: a seek below it lands there instead."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)  # fmt: skip
    if log_start:
        seek = consumer.seek
        consumer.seek = lambda part, offset: seek(part, max(offset, log_start))
    pool = await create_pool(database_url, size=2, application_name="test")
    await consumer.start()
    try:
        consumer.assign([tp])
        applying = Applying(consumer, pool, group_id="g", schema="scorer",
                            metrics=scorer_metrics(registry))  # fmt: skip
        applying.applied = []
        await applying.resync([tp])
        yield consumer, applying
    finally:
        await consumer.stop()
        await pool.close()


@contextlib.asynccontextmanager
async def _three_applied(
    database_url: str, bootstrap: str, topic: str
) -> AsyncIterator[tuple[AIOKafkaConsumer, Applying]]:
    """A partition of three records, all applied (stored next offset 3)."""
    await _produce(bootstrap, topic, 3)
    async with _consuming(database_url, bootstrap, topic, new_registry()) as (consumer, applying):
        await wait_until(lambda: applying.applies([0, 1, 2]))
        yield consumer, applying


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


SKIPPED_LINE = "records skipped: the log does not hold the stored offset"


def _skipped(registry: CollectorRegistry, topic: str) -> float:
    labels = {"topic": topic, "partition": "0"}
    return registry.get_sample_value("tierstream_scorer_offsets_skipped_total", labels) or 0.0


def _skip_lines(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == SKIPPED_LINE]


async def test_a_topic_created_again_and_grown_past_the_stored_offset_counts_its_records_skipped(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    # The consumer sought to the stored offset in the new log and read on from there: its
    # first records were never read, with no metric, no log line and a lag of 0.
    topic = f"{topic_namespace}.replaced"
    async with _three_applied(scorer_db, kafka_bootstrap, topic):
        pass
    await recreate_topic(kafka_bootstrap, topic, 1)
    await _produce(kafka_bootstrap, topic, 8)  # grown past the stored offset, 3
    registry = new_registry()
    with capture_logs() as logs:
        async with _consuming(scorer_db, kafka_bootstrap, topic, registry) as (_, applying):
            await wait_until(lambda: applying.applies([3, 4, 5, 6, 7]))
    assert _skipped(registry, topic) == 3  # the new log's 0, 1 and 2
    [line] = _skip_lines(logs)
    assert line["log_level"] == "error"
    assert (line["topic"], line["partition"], line["stored"], line["first"]) == (topic, 0, 3, 2)
    assert (line["skipped"], line["next_offset"], line["cause"]) == (3, 3, ANOTHER_LOG)
    assert await count(scorer_db, STORED) == 8

    # Started again on that log: its records are the ones applied, nothing more is skipped.
    await _produce(kafka_bootstrap, topic, 2)
    registry = new_registry()
    with capture_logs() as logs:
        async with _consuming(scorer_db, kafka_bootstrap, topic, registry) as (_, applying):
            await wait_until(lambda: applying.applies([8, 9]))
    assert _skipped(registry, topic) == 0 and _skip_lines(logs) == []


@pytest.mark.parametrize("with_timestamp", [True, False])
async def test_a_log_that_starts_past_the_stored_offset_counts_the_records_between(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str, with_timestamp: bool
) -> None:
    # Retention deleted records the consumer had not read: the fetch fell back to the log's
    # start and went on from there, and nothing said so.
    topic = f"{topic_namespace}.retention"
    async with _three_applied(scorer_db, kafka_bootstrap, topic):
        pass
    if not with_timestamp:  # as an older release stored it
        async with connect(scorer_db) as conn:
            await conn.execute("UPDATE scorer.consumer_offset SET last_record_offset = NULL,"
                               " last_record_timestamp_ms = NULL")  # fmt: skip
    await _produce(kafka_bootstrap, topic, 7)  # 3 to 9; retention deleted all below 7
    registry = new_registry()
    with capture_logs() as logs:
        async with _consuming(scorer_db, kafka_bootstrap, topic, registry, log_start=7) as (
            _, applying,
        ):  # fmt: skip
            await wait_until(lambda: applying.applies([7, 8, 9]))
    assert _skipped(registry, topic) == 4  # 3, 4, 5 and 6
    [line] = _skip_lines(logs)
    assert (line["stored"], line["first"], line["skipped"]) == (3, 7, 4)
    assert (line["next_offset"], line["cause"]) == (7, LOG_STARTS_PAST)
    assert await count(scorer_db, STORED) == 10


async def test_a_start_at_the_stored_offset_of_the_same_log_counts_nothing(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    topic = f"{topic_namespace}.same"
    async with _three_applied(scorer_db, kafka_bootstrap, topic):
        pass
    await _produce(kafka_bootstrap, topic, 2)
    registry = new_registry()
    with capture_logs() as logs:
        async with _consuming(scorer_db, kafka_bootstrap, topic, registry) as (consumer, applying):
            # Sought to the last record applied, to compare it: read, and not applied again.
            assert await consumer.position(TopicPartition(topic, 0)) == 2
            await wait_until(lambda: applying.applies([3, 4]))
    assert _skipped(registry, topic) == 0 and _skip_lines(logs) == []
    assert await count(scorer_db, STORED) == 5


async def test_a_timestamp_an_older_release_left_for_another_offset_is_not_compared(
    scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    # An older release advances the offset without the timestamp: the one stored belongs to
    # a record before, which compared with the record before the new offset would not match.
    topic = f"{topic_namespace}.older"
    async with _three_applied(scorer_db, kafka_bootstrap, topic):
        pass
    await _produce(kafka_bootstrap, topic, 3)
    async with connect(scorer_db) as conn:  # the older release applied 3 and 4
        await conn.execute("UPDATE scorer.consumer_offset SET next_offset = 5")
    registry = new_registry()
    with capture_logs() as logs:
        async with _consuming(scorer_db, kafka_bootstrap, topic, registry) as (_, applying):
            await wait_until(lambda: applying.applies([5]))
    assert _skipped(registry, topic) == 0 and _skip_lines(logs) == []
