"""Poison records: decoding consumed records, and writing the undecodable to `<topic>.dlq`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import ValidationError

from shared.contracts import NUL_ESCAPE, customer_event_adapter, nul_paths
from shared.dead_letters import Poison, Record
from shared.domain.state import Event
from shared.logging import get_logger

log = get_logger(__name__)

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def decode(records: Iterable[Record]) -> tuple[list[tuple[Event, Record]], list[Poison]]:
    """Parse records into (event, record) pairs; the rest are poison with a short error."""
    decoded: list[tuple[Event, Record]] = []
    poison: list[Poison] = []
    validate = customer_event_adapter.validate_json
    for record in records:
        try:
            event = validate(record.value)
            if NUL_ESCAPE in record.value and (paths := nul_paths(event.model_dump())):
                where = ".".join(map(str, paths[0])) or "the event"
                raise ValueError(f"{where} contains a NUL character")
            decoded.append((event, record))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
            poison.append(Poison(record, text or str(exc)))
        except (ValueError, TypeError) as exc:
            poison.append(Poison(record, f"{type(exc).__name__}: {exc}"))
    return decoded, poison


def traceparent_of(record: Record) -> str | None:
    """The record's W3C `traceparent` header when it is well formed (passed on unchanged)."""
    for key, value in record.headers or ():
        if key == "traceparent" and value is not None:
            text = value.decode("ascii", errors="replace")
            return text if _TRACEPARENT.fullmatch(text) else None
    return None
