"""Poison records go to `<topic>.dlq` with their origin and the error, and the partition
keeps flowing: the one dead-letter writer both consumers use."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaProducer

from shared.kafka import dlq_headers
from shared.logging import get_logger
from shared.topics import Topics

log = get_logger(__name__)

# A dead-lettered payload larger than this is cut (and flagged) so the DLQ write cannot fail.
DLQ_MAX_BYTES = 900_000
Record: TypeAlias = Any  # aiokafka's ConsumerRecord (the library ships no types)


@dataclass(frozen=True)
class Poison:
    """A record that could not be decoded, validated or stored, and why."""

    record: Record
    error: str


def message_id_of(record: Record) -> str | None:
    """The `event_id` (or tier-change `id`) a poison record claims, if readable (for logs)."""
    try:
        data = orjson.loads(record.value)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(data, dict):
        return None
    found = data.get("event_id", data.get("id"))
    return found[:128] if isinstance(found, str) else None


async def dead_letter(
    producer: AIOKafkaProducer, poison: Sequence[Poison], *, group_id: str
) -> list[str]:
    """Write poison records to `<topic>.dlq`, wait for the broker's acks, log each one.

    `group_id` names the consumer group that refused the record (`dlq_consumer_group`
    header): a topic read by two groups can dead-letter one record twice. Returns the DLQ
    topic of each record, in order, for the caller's metrics.
    """
    futures, topics = [], []
    for item in poison:
        r = item.record
        value = r.value if r.value is not None else b""
        headers = dlq_headers(
            topic=r.topic, partition=r.partition, offset=r.offset, error=item.error,
            original=list(r.headers or ()),
        )  # fmt: skip
        headers.append(("dlq_consumer_group", group_id.encode()))
        if len(value) > DLQ_MAX_BYTES:
            value, headers = value[:DLQ_MAX_BYTES], [*headers, ("dlq_truncated", b"true")]
        topics.append(Topics.dlq(r.topic))
        futures.append(await producer.send(topics[-1], value=value, key=r.key, headers=headers))
    await asyncio.gather(*futures)
    for item, dlq in zip(poison, topics, strict=True):  # once the DLQ holds them
        r = item.record
        log.warning(
            "record dead-lettered", message_id=message_id_of(r), topic=r.topic,
            partition=r.partition, offset=r.offset, dlq_topic=dlq, error=item.error,
        )  # fmt: skip
    return topics
