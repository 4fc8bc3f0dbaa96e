"""The producer's batch path: a request's records grouped per partition, one batch per group.

aiokafka's `send()` costs a partitioner call, an accumulator look-up and a future per
record. A request already holds all of its records, so ingest groups them by topic and
partition itself and hands each group to the producer as whole `BatchBuilder`s
(`send_batch`): one future per batch, and no lingering, since a closed batch is sent at once.

The partition is the one aiokafka's DefaultPartitioner (like the Java client) picks for a
keyed record: murmur2 of the key bytes over all of the topic's partitions. Keeping that
rule keeps each customer on the partition every other producer of the topic writes it to.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from shared.kafka import Headers

Record = tuple[bytes, bytes, Headers]  # key, value, headers
Groups = Mapping[tuple[str, int], Sequence[Record]]  # (topic, partition) -> its records in order


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


async def send_groups(producer: AIOKafkaProducer, groups: Groups) -> list[asyncio.Future[Any]]:
    """Queue every group as whole batches, in order; the futures resolve on the broker's acks."""
    futures: list[asyncio.Future[Any]] = []
    for (topic, partition), records in groups.items():
        futures += await _send_partition(producer, topic, partition, records)
    return futures


async def _send_partition(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Sequence[Record]
) -> list[asyncio.Future[Any]]:
    futures = []
    batch = producer.create_batch()
    for key, value, headers in records:
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            futures.append(await _submit(producer, batch, topic, partition))  # full: next batch
            batch = producer.create_batch()
            # An empty batch takes any record, however large, as send() would put it alone.
            batch.append(key=key, value=value, timestamp=None, headers=headers)
    futures.append(await _submit(producer, batch, topic, partition))
    return futures


async def _submit(
    producer: AIOKafkaProducer, batch: Any, topic: str, partition: int
) -> asyncio.Future[Any]:
    batch.close()  # complete: send it with the next request instead of lingering for more
    future: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
    return future
