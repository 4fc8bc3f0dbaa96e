"""The producer's batch path: records grouped per partition, one batch per group (ingest, relay).

aiokafka's `send()` costs a partitioner call, an accumulator look-up and a future per
record. A caller that already holds all of its records (an ingest request, a relay
round) groups them by topic and partition itself and hands each group to the producer as
whole `BatchBuilder`s (`send_batch`): one future per batch, and no lingering, since a
closed batch is sent at once.

The partition is the one aiokafka's DefaultPartitioner (like the Java client) picks for a
keyed record: murmur2 of the key bytes over all of the topic's partitions. Keeping that
rule keeps each customer on the partition every other producer of the topic writes it to.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from shared.kafka import Headers

Record = tuple[bytes, bytes, Headers]  # key, value, headers
Groups = Mapping[tuple[str, int], Sequence[Record]]  # (topic, partition) -> its records in order


def size_over(record: Record, limit: int) -> int | None:
    """The size of `record`'s batch, alone, when it is over the broker's `limit` (None when
    it fits). The exact estimate runs only for a value over half the limit: most are tiny."""
    key, value, headers = record
    if len(value) <= limit // 2:
        return None
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size if size > limit else None


class KeyPartitioner:
    """murmur2 of the key over all partitions, as aiokafka's DefaultPartitioner; hashes cached."""

    def __init__(self, cache_size: int = 65_536) -> None:
        # aiokafka's murmur2 is pure Python (~2.5 us a key) and customers recur: cache the hash
        # (not the partition, so a topic that gains partitions is still hashed correctly).
        self._murmur2 = functools.lru_cache(maxsize=cache_size)(murmur2)

    def partition(self, key: bytes, partitions: Sequence[int]) -> int:
        """The partition of `key` among `partitions`, all of the topic's, sorted by id."""
        hashed: int = self._murmur2(key)
        return partitions[(hashed & 0x7FFFFFFF) % len(partitions)]

    def grouped(
        self, records: Iterable[tuple[str, Record]], partitions: Mapping[str, Sequence[int]]
    ) -> dict[tuple[str, int], list[Record]]:
        """Each (topic, record) under its topic and its key's partition (`partitions`: each
        topic's, sorted), in the given order: `build_batches`' groups."""
        groups: defaultdict[tuple[str, int], list[Record]] = defaultdict(list)
        for topic, record in records:
            groups[topic, self.partition(record[0], partitions[topic])].append(record)
        return groups


@dataclass(frozen=True)
class PartitionBatch:
    """A closed BatchBuilder and where it goes."""

    topic: str
    partition: int
    builder: Any  # aiokafka.producer.message_accumulator.BatchBuilder


def build_batches(producer: AIOKafkaProducer, groups: Groups) -> list[PartitionBatch]:
    """Every group's records as closed batches in order; a group over one batch size gets more."""
    batches: list[PartitionBatch] = []
    for (topic, partition), records in groups.items():
        builder = producer.create_batch()
        for key, value, headers in records:
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                batches.append(_closed(topic, partition, builder))  # full: start the next one
                builder = producer.create_batch()
                # An empty batch takes any record, however large, as send() would put it alone.
                builder.append(key=key, value=value, timestamp=None, headers=headers)
        batches.append(_closed(topic, partition, builder))
    return batches


def _closed(topic: str, partition: int, builder: Any) -> PartitionBatch:
    builder.close()  # complete: sent with the next request instead of lingering for more
    return PartitionBatch(topic, partition, builder)


async def send_batches(
    producer: AIOKafkaProducer, batches: Sequence[PartitionBatch]
) -> list[asyncio.Future[Any]]:
    """Queue the batches in order; the futures resolve on the broker's acks."""
    futures: list[asyncio.Future[Any]] = []
    for batch in batches:
        futures.append(
            await producer.send_batch(batch.builder, batch.topic, partition=batch.partition)
        )
    return futures


async def send_in_order(producer: AIOKafkaProducer, batches: Sequence[PartitionBatch]) -> None:
    """Send the batches so that a partition's later batch is never written without its
    earlier ones: each partition's next batch is queued once the previous one is acked, and
    a partition stops at its first failure. Raises that failure once every partition has
    finished (nothing of the round lands after the caller has given it up and retries).

    Without idempotence (not every broker has it), a batch whose request timed out is failed
    while aiokafka sends the partition's next one, which may be written: the retry then put
    a customer's later change before its earlier one."""
    chains: defaultdict[tuple[str, int], list[PartitionBatch]] = defaultdict(list)
    for batch in batches:
        chains[batch.topic, batch.partition].append(batch)

    async def chain(ordered: list[PartitionBatch]) -> None:
        for batch in ordered:
            await (await producer.send_batch(batch.builder, batch.topic, partition=batch.partition))

    outcomes = await asyncio.gather(*map(chain, chains.values()), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
