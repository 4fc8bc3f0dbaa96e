"""Batch shaping for the consumer: gather records across partitions, pause the cyclic GC.

Bigger batches are cheaper per event (each customer is loaded, classified and written
once per batch, however many of its events the batch holds), so the consumer keeps
gathering until `max_records` or `linger_ms` after the first record. Under a backlog
the buffers are full and batches fill at once; under a trickle a record waits at most
`linger_ms` longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

Batch = dict[TopicPartition, list[Any]]


async def gather_batch(
    consumer: AIOKafkaConsumer, *, max_records: int, wait_ms: int, linger_ms: int
) -> Batch:
    """Wait up to `wait_ms` for records, then keep adding for up to `linger_ms`.

    Behind (the broker holds at least enough further records to fill the batch), the
    batch keeps filling for up to `wait_ms` instead: catching up, bigger batches are
    cheaper per event, and nothing is waiting for the linger to end.
    """
    batch: Batch = await consumer.getmany(timeout_ms=wait_ms, max_records=max_records)
    total = sum(len(records) for records in batch.values())
    loop = asyncio.get_running_loop()
    started = loop.time()
    while batch and total < max_records:
        behind = records_behind(batch, consumer.highwater) >= max_records - total
        left_ms = int((started + (wait_ms if behind else linger_ms) / 1000 - loop.time()) * 1000)
        if left_ms <= 0:
            break
        more: Batch = await consumer.getmany(timeout_ms=left_ms, max_records=max_records - total)
        if not more:
            break
        for tp, records in more.items():
            batch.setdefault(tp, []).extend(records)
            total += len(records)
    return batch


def records_behind(batch: Batch, highwater: Callable[[TopicPartition], int | None]) -> int:
    """Records the broker holds beyond this batch on the batch's partitions (as last fetched)."""
    behind = 0
    for tp, records in batch.items():
        end = highwater(tp)
        if end is not None and records:
            behind += max(0, end - records[-1].offset - 1)
    return behind


def split_lanes(batch: Batch, lanes: int) -> list[Batch]:
    """Split a batch into up to `lanes` parts of about equal size, by partition number.

    Producers key events by customer id, so one customer's events share a partition
    number on every topic: parts split this way touch disjoint customers, and their
    transactions do not wait for each other (if they did, row locks keep them correct).
    """
    sizes: dict[int, int] = {}
    for tp, records in batch.items():
        sizes[tp.partition] = sizes.get(tp.partition, 0) + len(records)
    loads = [0] * max(1, min(lanes, len(sizes)))
    lane_of: dict[int, int] = {}
    for partition, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        lane = loads.index(min(loads))  # the least loaded lane takes the next biggest
        lane_of[partition], loads[lane] = lane, loads[lane] + size
    parts: list[Batch] = [{} for _ in loads]
    for tp, records in batch.items():
        parts[lane_of[tp.partition]][tp] = records
    return parts
