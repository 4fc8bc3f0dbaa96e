"""Poison records: decoding consumed records, and writing the undecodable to `<topic>.dlq`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from shared.contracts import customer_event_adapter
from shared.dead_letters import Poison, Record
from shared.domain.state import Event
from shared.logging import get_logger

log = get_logger(__name__)

_NUL = b"\\u0000"  # how JSON spells the one character Postgres text cannot hold
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


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
