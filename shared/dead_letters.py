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

# Room left in a dead-letter record for Kafka's record and batch framing, beyond the value,
# key and headers: a payload is cut (and flagged) to fit the broker's limit with it, so the
# DLQ write cannot be refused and stop the partition.
DLQ_FRAMING_BYTES = 2048
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
    producer: AIOKafkaProducer, poison: Sequence[Poison], *, group_id: str,
    max_message_bytes: int,
) -> list[str]:  # fmt: skip
    """Write poison records to `<topic>.dlq`, wait for the broker's acks, log each one.

    `group_id` names the consumer group that refused the record (`dlq_consumer_group`
    header): a topic read by two groups can dead-letter one record twice. A value that
    would take the record past `max_message_bytes` (KAFKA_MAX_MESSAGE_BYTES) is cut to fit
    and flagged `dlq_truncated`. Returns the DLQ topic of each record, in order, for the
    caller's metrics.
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
        headers_size = sum(len(k) + len(v) for k, v in headers) + len("dlq_truncated") + 4
        room = max_message_bytes - DLQ_FRAMING_BYTES - len(r.key or b"") - headers_size
        if len(value) > room:
            value, headers = value[: max(0, room)], [*headers, ("dlq_truncated", b"true")]
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
