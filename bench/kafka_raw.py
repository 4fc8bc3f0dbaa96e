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


async def produce(
    settings: ServiceSettings, namespace: str, records: Sequence[Record]
) -> tuple[float, Loaded]:
    """Publish `records` as ingest does (send, then wait for every ack); returns seconds."""
    topics = Topics(namespace)
    await ensure_topics(settings, topics.all())
    producer = make_producer(settings)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [
            await producer.send(
                topics.for_event(r.event_type), r.value, key=r.key, headers=r.headers
            )
            for r in records
        ]
        metadata = await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    ends: dict[tuple[str, int], int] = {}
    for m in metadata:
        ends[(m.topic, m.partition)] = max(ends.get((m.topic, m.partition), 0), m.offset + 1)
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
