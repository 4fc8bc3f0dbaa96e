"""Raw Kafka limits: the aiokafka producer and consumer alone, with production settings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from bench.events import Record
from shared.contracts import parse_event
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.kafka_batches import KeyPartitioner, PartitionBatch, build_batches, send_batches
from shared.settings import ServiceSettings
from shared.topics import Topics

Decoder = Callable[[bytes], Any]
DECODERS: dict[str, Decoder] = {"json": json.loads, "pydantic": parse_event}


def kafka_settings(bootstrap: str, partitions: int) -> ServiceSettings:
    """Shared settings pointing at the benchmark's broker."""
    return ServiceSettings(kafka_bootstrap_servers=bootstrap, partitions=partitions)


@dataclass(frozen=True)
class Loaded:
    """Topics filled with records: the next offset of every partition."""

    namespace: str
    ends: dict[tuple[str, int], int]

    @property
    def total(self) -> int:
        return sum(self.ends.values())


# Events per produce call: an ingest request's batch.
CHUNK = 1000


async def produce(
    settings: ServiceSettings, namespace: str, records: Sequence[Record]
) -> tuple[float, Loaded]:
    """Publish `records` by the producer's fastest path, the one ingest takes: for every
    CHUNK of them, one closed batch per partition (shared/kafka_batches.py); then wait for
    every ack. Returns the seconds from the first send to the last ack."""
    topics = Topics(namespace)
    await ensure_topics(settings, topics.all())
    producer = make_producer(settings)
    partitioner = KeyPartitioner()
    await producer.start()
    try:
        names = {topics.for_event(r.event_type) for r in records}
        partitions = {topic: sorted(await producer.partitions_for(topic)) for topic in names}
        started = time.perf_counter()
        sent: list[tuple[asyncio.Future[Any], PartitionBatch]] = []
        for start in range(0, len(records), CHUNK):
            chunk = [(topics.for_event(r.event_type), (r.key, r.value, r.headers))
                     for r in records[start : start + CHUNK]]  # fmt: skip
            batches = build_batches(producer, partitioner.grouped(chunk, partitions))
            sent += zip(await send_batches(producer, batches), batches, strict=True)
        metadata = await asyncio.gather(*(future for future, _ in sent))
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    ends: dict[tuple[str, int], int] = {}
    for m, (_, batch) in zip(metadata, sent, strict=True):
        end = m.offset + batch.builder.record_count()  # the batch's base offset, then its records
        ends[(m.topic, m.partition)] = max(ends.get((m.topic, m.partition), 0), end)
    return seconds, Loaded(namespace, ends)


async def consume(
    settings: ServiceSettings, loaded: Loaded, decode: Decoder, poll_records: int
) -> float:
    """Read every loaded record from the beginning and decode its value; returns seconds."""
    topics = Topics(loaded.namespace)
    consumer = make_consumer(settings, None, max_poll_records=poll_records)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for topic in topics.events for p in range(settings.partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        started = time.perf_counter()
        seen = 0
        while seen < loaded.total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=poll_records)
            for records in batch.values():
                for record in records:
                    decode(record.value)
                seen += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
