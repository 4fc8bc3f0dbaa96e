"""Poison records: decoding consumed records, and writing the undecodable to `<topic>.dlq`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from shared.contracts import customer_event_adapter
from shared.domain.state import Event
from shared.kafka import dlq_headers
from shared.logging import get_logger
from shared.topics import Topics

log = get_logger(__name__)

# A dead-lettered payload larger than this is cut (and flagged) so the DLQ write cannot fail.
DLQ_MAX_BYTES = 900_000
Record: TypeAlias = Any  # aiokafka's ConsumerRecord (the library ships no types)
_NUL = b"\\u0000"  # how JSON spells the one character Postgres text cannot hold
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True)
class Poison:
    """A record that could not be decoded or validated, and why."""

    record: Record
    error: str


def decode(records: Iterable[Record]) -> tuple[list[tuple[Event, Record]], list[Poison]]:
    """Parse records into (event, record) pairs; the rest are poison with a short error."""
    decoded: list[tuple[Event, Record]] = []
    poison: list[Poison] = []
    validate = customer_event_adapter.validate_json
    for record in records:
        try:
            event = validate(record.value)
            if _NUL in record.value and _has_nul(event.model_dump()):
                raise ValueError("a text value contains a NUL character")
            decoded.append((event, record))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
            poison.append(Poison(record, text or str(exc)))
        except (ValueError, TypeError) as exc:
            poison.append(Poison(record, f"{type(exc).__name__}: {exc}"))
    return decoded, poison


def _has_nul(value: Any) -> bool:
    """Whether a NUL hides in any string (Postgres would refuse the whole batch)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def traceparent_of(record: Record) -> str | None:
    """The record's W3C `traceparent` header when it is well formed (passed on unchanged)."""
    for key, value in record.headers or ():
        if key == "traceparent" and value is not None:
            text = value.decode("ascii", errors="replace")
            return text if _TRACEPARENT.fullmatch(text) else None
    return None


def event_id_of(record: Record) -> str | None:
    """The `event_id` a poison record claims, if it has a readable one (for the logs)."""
    try:
        data = orjson.loads(record.value)
    except (orjson.JSONDecodeError, TypeError):
        return None
    event_id = data.get("event_id") if isinstance(data, dict) else None
    return event_id[:128] if isinstance(event_id, str) else None


async def dead_letter(producer: AIOKafkaProducer, poison: Sequence[Poison]) -> None:
    """Write poison records to `<topic>.dlq` and wait for the broker's acks."""
    futures = []
    for item in poison:
        r = item.record
        value = r.value if r.value is not None else b""
        headers = dlq_headers(
            topic=r.topic, partition=r.partition, offset=r.offset, error=item.error,
            original=list(r.headers or ()),
        )  # fmt: skip
        if len(value) > DLQ_MAX_BYTES:
            value, headers = value[:DLQ_MAX_BYTES], [*headers, ("dlq_truncated", b"true")]
        futures.append(
            await producer.send(Topics.dlq(r.topic), value=value, key=r.key, headers=headers)
        )
    await asyncio.gather(*futures)
    for item in poison:
        r = item.record
        log.warning(
            "record dead-lettered", event_id=event_id_of(r), topic=r.topic,
            partition=r.partition, offset=r.offset, error=item.error,
        )  # fmt: skip
