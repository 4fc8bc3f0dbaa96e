"""CSV rows -> validated events, deterministic event ids, and the resume checkpoint.

Columns are named as event fields (`customer_id`, `occurred_at`, `amount`, ...), or mapped
with `field=column`; `attributes.<name>` columns become customer attributes. A row without
an `event_id` gets one derived from its type and normalised content, so importing the same
file twice sends the same ids and the scorer counts nothing twice. Normalised means compared
by meaning, not spelling: amounts without trailing zeros (1000.00 and 1000 are one amount),
times in UTC (02:00+02:00 and 00:00Z are one instant).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from shared.contracts import EVENT_MODELS, CustomerLoggedIn, PurchaseMade, SupportTicketUpdated

EventModel = PurchaseMade | CustomerLoggedIn | SupportTicketUpdated
ATTRIBUTE_PREFIX = "attributes."
_DATE_ONLY = (re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"), re.compile(r"^(\d{4})(\d{2})(\d{2})$"))
_SLASHED = re.compile(r"^(\d{4})/(\d{2})/(\d{2})$")
_INTEGER = re.compile(r"^[+-]?\d{1,9}$")
_INTEGER_FIELDS = frozenset({"satisfaction", "nps"})
_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)


class RowError(ValueError):
    """Why one CSV row cannot become an event (the reason shown to the user)."""


def event_fields(kind: str) -> list[str]:
    """The fields a CSV may fill for an event type (all but `type`)."""
    return [name for name in EVENT_MODELS[kind].model_fields if name != "type"]


class MappingError(ValueError):
    """A `--column` option that is not `field=csv_column` for a field of the event type: a
    usage error (the message does not repeat the option's name)."""


def parse_mapping(pairs: Sequence[str], kind: str) -> dict[str, str]:
    """`field=column` options as {field: column}; unknown fields are refused (MappingError)."""
    known = event_fields(kind)
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise MappingError(f"{pair!r}: expected field=csv_column, e.g. customer_id=Kunde")
        if name not in known and not name.startswith(ATTRIBUTE_PREFIX):
            fields = ", ".join([*known, f"{ATTRIBUTE_PREFIX}<name>"])
            raise MappingError(f"{pair!r}: {kind} has no field {name!r} (fields: {fields})")
        mapping[name] = column
    return mapping


def parse_timestamp(raw: str) -> datetime:
    """ISO 8601 with a zone, or a date (YYYY-MM-DD, YYYYMMDD, YYYY/MM/DD) at midnight UTC."""
    text = raw.strip()
    for pattern in (*_DATE_ONLY, _SLASHED):
        if match := pattern.match(text):
            year, month, day = (int(part) for part in match.groups())
            try:
                return datetime(year, month, day, tzinfo=UTC)
            except ValueError as exc:
                raise RowError(f"occurred_at: {text!r} is not a valid date ({exc})") from exc
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RowError(f"occurred_at: {text!r} is not ISO 8601 or a YYYY-MM-DD date") from exc
    if at.tzinfo is None:
        raise RowError(f"occurred_at: {text!r} has a time but no timezone (add Z or +hh:mm)")
    return at


def _columns_for(kind: str, header: Sequence[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """{field: column} for every field this header can fill."""
    present = set(header)
    wanted = {name: mapping.get(name, name) for name in event_fields(kind)}
    wanted |= {c: c for c in header if c.startswith(ATTRIBUTE_PREFIX) and c not in mapping}
    wanted |= {f: c for f, c in mapping.items() if f.startswith(ATTRIBUTE_PREFIX)}
    return {name: column for name, column in wanted.items() if column in present}


def unused_columns(kind: str, header: Sequence[str], mapping: Mapping[str, str]) -> list[str]:
    """Header columns that no event field reads (shown once, so a typo is noticed)."""
    used = set(_columns_for(kind, header, mapping).values())
    return [column for column in header if column not in used]


def _raw_event(kind: str, row: Mapping[str, str], columns: Mapping[str, str]) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind}
    attributes: dict[str, str] = {}
    for name, column in columns.items():
        value = (row.get(column) or "").strip()
        if not value:
            continue  # an empty cell is an absent optional field
        if name.startswith(ATTRIBUTE_PREFIX):
            attributes[name.removeprefix(ATTRIBUTE_PREFIX)] = value
        elif name == "occurred_at":
            event[name] = parse_timestamp(value)
        elif name in ("items", "attributes"):
            event[name] = _json_cell(name, value)
        elif name in _INTEGER_FIELDS and _INTEGER.match(value):
            event[name] = int(value)  # the contracts take strict ints; a CSV cell is text
        else:
            event[name] = value
    if attributes:
        given = event.get("attributes")
        event["attributes"] = {**(given if isinstance(given, dict) else {}), **attributes}
    return event


def _json_cell(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise RowError(f"{name}: not valid JSON") from exc
    except RecursionError as exc:  # the decoder recurses per level: a reject, not a crash
        raise RowError(f"{name}: JSON nested too deeply") from exc


def validation_reason(exc: ValidationError) -> str:
    """Pydantic errors as `field: message; ...`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p != "type") or "row"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _canonical(value: Any) -> Any:
    """The one spelling of a value: Decimals without trailing zeros or exponent, times in UTC
    as the contracts write them; containers element by element. Other values as they are."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return _TIME.dump_python(value.astimezone(UTC), mode="json")
    if isinstance(value, Mapping):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def derive_event_id(kind: str, payload: Mapping[str, Any]) -> str:
    """A stable id from the event type and its normalised content (event_id excluded).

    Content already in canonical form (UTC times, amounts without trailing zeros) keeps the
    id it had before amounts and times were normalised.
    """
    content = {k: _canonical(v) for k, v in payload.items() if k != "event_id"}
    canonical = json.dumps([kind, content], sort_keys=True, separators=(",", ":"), default=str)
    return f"csv-{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def row_to_event(kind: str, row: Mapping[str, str], columns: Mapping[str, str]) -> EventModel:
    """Validate one row as an event of `kind` (raises RowError with the reason)."""
    raw = _raw_event(kind, row, columns)
    given_id = raw.get("event_id")
    model = EVENT_MODELS[kind]
    try:
        event = model.model_validate({**raw, "event_id": given_id or "pending"})
    except ValidationError as exc:
        raise RowError(validation_reason(exc)) from exc
    if given_id:
        return event
    payload = event.model_dump(exclude_none=True)  # Python values: Decimals, datetimes
    return event.model_copy(update={"event_id": derive_event_id(kind, payload)})


def required_fields(kind: str) -> list[str]:
    """The fields every row of an event type must fill (event_id is derived when absent)."""
    return [
        name
        for name, info in EVENT_MODELS[kind].model_fields.items()
        if info.is_required() and name not in ("type", "event_id")
    ]


def columns_for(kind: str, header: Sequence[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """{field: column} for a CSV header; refuses a header that lacks a required field."""
    columns = _columns_for(kind, header, mapping)
    missing = [name for name in required_fields(kind) if name not in columns]
    if missing:
        wanted = ", ".join(f"{m} (column {mapping.get(m, m)!r})" for m in missing)
        raise ValueError(f"the CSV has no column for: {wanted}; map one with --column")
    return columns


# --- the checkpoint: the last line whose outcome (sent or rejected) is settled ---


def checkpoint_path(source: Path) -> Path:
    """`<input>.checkpoint`, next to the input."""
    return source.with_name(source.name + ".checkpoint")


def rejects_path(source: Path) -> Path:
    """`<input>.rejects.csv`, next to the input."""
    return source.with_name(source.name + ".rejects.csv")


@dataclass(frozen=True)
class Checkpoint:
    """How far an import of this exact file with these options has been acknowledged."""

    line: int
    fingerprint: str


def input_fingerprint(source: Path, kind: str, mapping: Mapping[str, str]) -> str:
    """Identifies the file version and options; a changed file restarts from the top."""
    stat = source.stat()
    raw = json.dumps([stat.st_size, stat.st_mtime_ns, kind, sorted(mapping.items())])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def load_checkpoint(path: Path, fingerprint: str) -> int:
    """The line to resume after, 0 when there is no usable checkpoint."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return 0
    line = data.get("line")
    return line if isinstance(line, int) and line > 0 else 0


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically record progress (write a temporary file, then rename over)."""
    tmp = path.with_name(path.name + ".tmp")
    body = {"line": checkpoint.line, "fingerprint": checkpoint.fingerprint}
    tmp.write_text(json.dumps(body), encoding="utf-8")
    os.replace(tmp, path)
