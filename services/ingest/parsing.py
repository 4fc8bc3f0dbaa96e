"""Request parsing for ingest: bounded body reads, content type, event validation.

JSON is decoded once, by jiter, the parser inside pydantic-core, so its syntax rules hold
(valid UTF-8, no lone surrogates, no NaN, bounded nesting, precise error positions), in its
`decimal` float mode: every non-integer number is an exact `Decimal` (0.1 stays
Decimal('0.1'); pydantic's own JSON mode would go through a binary float).

Validation runs first without the per-event "not in the future" validator, whose Python call
per event costs more than the rest of an event's checks; the times are compared afterwards.
Anything that fails either way is validated again with every check, for the full error list.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jiter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from services.ingest.publisher import Event
from shared.contracts import (
    EVENT_MODELS,
    ID_PATTERN,
    ID_PATTERN_REASON,
    NUL_REASON,
    STRICT_JSON,
    CustomerEvent,
    ShortText,
    nul_paths,
)
from shared.http import ProblemError, body_too_large, declares_more_than

FUTURE_ERROR = "occurred_at_in_future"
PAST_ERROR = "occurred_at_too_old"
_TIME_ERRORS = {FUTURE_ERROR, PAST_ERROR}
# A 422 lists at most this many errors: a megabyte of wrong line items would otherwise
# answer with tens of megabytes, and build them on the event loop.
MAX_REPORTED_ERRORS = 100
_TAG_ERRORS = {"union_tag_invalid", "union_tag_not_found"}


def _in_accepted_times(event: Event, info: ValidationInfo) -> Event:
    """Reject events stamped later than the `not_after` instant passed as context, or
    before its `not_before` (a zero date, 0001-01-01 or 1970-01-01, from a sender's bug:
    accepted, it made the customer churned at once, and the churn playbooks ran)."""
    context = info.context or {}
    not_after: datetime | None = context.get("not_after")
    not_before: datetime | None = context.get("not_before")
    if not_after is not None and event.occurred_at > not_after:
        raise PydanticCustomError(
            FUTURE_ERROR, "occurred_at lies more than the allowed skew in the future"
        )
    if not_before is not None and event.occurred_at < not_before:
        raise PydanticCustomError(
            PAST_ERROR,
            "occurred_at lies further in the past than ingest accepts (INGEST_MAX_PAST_DAYS)",
        )
    return event


IncomingEvent = Annotated[CustomerEvent, AfterValidator(_in_accepted_times)]


class EventBatch(BaseModel):
    """`POST /v1/events/batch` body: up to the configured number of events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[IncomingEvent] = Field(min_length=1, description="The events, all or nothing.")


def batch_model(max_events: int) -> type[EventBatch]:
    """An EventBatch whose `events` list is capped at `max_events` (schema and validation)."""
    limited = Annotated[
        list[IncomingEvent],
        Field(min_length=1, max_length=max_events, description="The events, all or nothing."),
    ]
    return create_model("EventBatch", __base__=EventBatch, events=(limited, ...))


class _UncheckedTimes(BaseModel):
    """The batch body without the future check: the fast path's model (never in the schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[CustomerEvent]


def _fast_batch(max_events: int) -> TypeAdapter[_UncheckedTimes]:
    # Stopping at the first invalid event: this path only decides, the slow path reports.
    limited = Annotated[
        list[CustomerEvent], Field(min_length=1, max_length=max_events, fail_fast=True)
    ]
    model = create_model("EventBatch", __base__=_UncheckedTimes, events=(limited, ...))
    return TypeAdapter(model)


class FieldError(BaseModel):
    """One reason an event was rejected."""

    field: str = Field(description="Path of the offending field, e.g. `events[3].amount`.")
    reason: str
    type: str | None = Field(None, description="Machine-readable error kind.")
    index: int | None = Field(None, description="Index of the offending event in a batch.")


@dataclass(frozen=True)
class EventParser:
    """Strict decoding of one event or a batch, with its errors located (up to 100)."""

    batch_model: type[EventBatch]
    batch: TypeAdapter[EventBatch]
    single: TypeAdapter[Event]
    max_future: timedelta
    max_past: timedelta | None
    fast_batch: TypeAdapter[_UncheckedTimes]
    fast_single: TypeAdapter[Event]
    source_name: TypeAdapter[str]

    @classmethod
    def create(
        cls, *, max_events: int, max_future_seconds: float, max_past_days: int = 0
    ) -> EventParser:
        """A parser for batches of at most `max_events`, times at most this far ahead and
        (unless 0) at most `max_past_days` back."""
        model = batch_model(max_events)
        single: TypeAdapter[Event] = TypeAdapter(IncomingEvent)
        fast_single: TypeAdapter[Event] = TypeAdapter(CustomerEvent)
        return cls(
            model,
            TypeAdapter(model),
            single,
            timedelta(seconds=max_future_seconds),
            timedelta(days=max_past_days) if max_past_days else None,
            _fast_batch(max_events),
            fast_single,
            TypeAdapter(ShortText),
        )

    def validate(self, data: object, *, now: datetime, batch: bool) -> list[Event]:
        """Every event of a decoded body, or ProblemError 422 locating its errors."""
        not_after = now + self.max_future
        not_before = _earliest(now, self.max_past)
        try:
            if batch:
                events = list(self.fast_batch.validate_python(data, context=STRICT_JSON).events)
            else:
                events = [self.fast_single.validate_python(data, context=STRICT_JSON)]
        except ValidationError:
            events = []
        lowest = not_before or _CALENDAR_START
        if events and all(lowest <= event.occurred_at <= not_after for event in events):
            return refuse_conflicting_ids(events) if batch else events
        times = {"not_after": not_after, "not_before": not_before}
        return refuse_conflicting_ids(self._validate_reporting(data, times, batch=batch))

    def fill_source(self, data: object, source: str, *, batch: bool) -> None:
        """Give items of a decoded body without a `source` the API key's source name, in place.

        Filling before validation spares a model copy per event afterwards. A source name
        that is not a valid `source` value is left for `intake.with_source` to set as before.
        """
        try:
            self.source_name.validate_python(source)
        except ValidationError:
            return
        items = data.get("events") if batch and isinstance(data, dict) else [data]
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and item.get("source") is None:
                item["source"] = source

    def _validate_reporting(
        self, data: object, times: dict[str, datetime | None], *, batch: bool
    ) -> list[Event]:
        """Validation with every check, the times' bounds included: the errors to report."""
        context = {**STRICT_JSON, **times}
        try:
            if batch:
                return list(self.batch.validate_python(data, context=context).events)
            return [self.single.validate_python(data, context=context)]
        except ValidationError as exc:
            total = exc.error_count()
            errors = self._first_errors(data, context) if total > MAX_REPORTED_ERRORS else []
            if not errors:  # the error list of a few hundred thousand takes seconds to build
                errors = _details(exc)[:MAX_REPORTED_ERRORS]
            described = [describe_error(e, batch=batch) for e in errors]
            raise _invalid(described, total=total) from None

    def _first_errors(self, data: object, context: dict[str, Any]) -> list[ErrorDetails]:
        """About the first MAX_REPORTED_ERRORS errors of a batch, found event by event."""
        if not isinstance(data, dict):
            return []
        items = data.get("events")
        # The body's own errors first (an unknown field beside `events`): they were lost
        # behind the events' when those alone filled the list.
        found = self._body_errors(data, context)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if len(found) >= MAX_REPORTED_ERRORS:
                break
            try:
                self.single.validate_python(item, context=context)
            except ValidationError as exc:
                for error in _details(exc)[: MAX_REPORTED_ERRORS - len(found)]:
                    error["loc"] = ("events", index, *error["loc"])
                    found.append(error)
        return found

    def _body_errors(self, data: dict[str, Any], context: dict[str, Any]) -> list[ErrorDetails]:
        try:
            self.batch.validate_python({**data, "events": []}, context=context)
        except ValidationError as exc:
            return [e for e in _details(exc) if e["loc"][:1] != ("events",)]
        return []

    def refuse_nul(self, data: object, *, batch: bool) -> None:
        """ProblemError 422 for every text value of a valid body that holds a NUL character.

        Postgres text cannot hold one: accepted, such an event could only be dead-lettered.
        """
        paths = nul_paths(data)
        if paths:
            errors = [_nul_error(path, batch=batch) for path in paths[:MAX_REPORTED_ERRORS]]
            raise _invalid(errors, total=len(paths))


def refuse_conflicting_ids(events: list[Event]) -> list[Event]:
    """The batch, unless two different events share an event_id (422 naming both).

    Consumers keep the first event of an id and drop the rest as duplicates: a second,
    different event under the same id would be lost without a word. The same event twice
    is a resend, and harmless.
    """
    first: dict[str, int] = {}
    errors: list[FieldError] = []
    for index, event in enumerate(events):
        seen = first.setdefault(event.event_id, index)
        if seen != index and (events[seen] != event or _typed(events[seen]) != _typed(event)):
            errors.append(FieldError(
                field=f"events[{index}].event_id",
                reason=f"events[{seen}] is a different event with the same event_id",
                type="event_id_conflict", index=index,
            ))  # fmt: skip
    if errors:
        raise _invalid(errors[:MAX_REPORTED_ERRORS], total=len(errors))
    return events


def _typed(event: Event) -> dict[str, tuple[type, object]] | None:
    """The event's attributes with their types: `True == 1 == 1.0` in Python, but they are
    three different values on the wire."""
    return {k: (type(v), v) for k, v in event.attributes.items()} if event.attributes else None


def _details(exc: ValidationError) -> list[ErrorDetails]:
    return exc.errors(include_url=False, include_input=False, include_context=False)


def _nul_error(path: tuple[str | int, ...], *, batch: bool) -> FieldError:
    index = path[1] if batch and len(path) >= 2 and isinstance(path[1], int) else None
    return FieldError(
        field=_dotted(path),
        reason=NUL_REASON,
        type="string_nul",
        index=index,
    )


def _invalid(errors: list[FieldError], *, total: int) -> ProblemError:
    listed = "" if total == len(errors) else f" ({len(errors)} are listed)"
    return ProblemError(
        422,
        "Invalid events",
        f"{total} validation error(s){listed}; nothing was published.",
        errors=[e.model_dump(exclude_none=True) for e in errors],
    )


def decode_json(raw: bytes) -> Any:
    """JSON text to Python values with exact Decimals; ProblemError 400 when malformed."""
    try:
        # Only object keys are cached: values (ids, times) rarely repeat within a body. A
        # repeated key would otherwise keep its last value silently (`"type": "login", ...,
        # "type": "purchase"`); refusing it costs about 0.5 µs an event.
        return jiter.from_json(
            raw, allow_inf_nan=False, float_mode="decimal", cache_mode="keys",
            catch_duplicate_keys=True,
        )  # fmt: skip
    except ValueError as exc:  # also: invalid UTF-8, recursion limit, oversized integers
        detail = f"Invalid JSON: {exc}"
        if raw.startswith(codecs.BOM_UTF8):  # some Windows tools write one; JSON has none
            detail += " (the body starts with a UTF-8 byte order mark: send it without)"
        raise ProblemError(400, "Malformed JSON", detail) from None


def describe_error(error: ErrorDetails, *, batch: bool) -> FieldError:
    """A pydantic error as a dotted field path (`events[3].items[0].sku`) and a reason."""
    loc: list[str | int] = list(error["loc"])
    head: list[str | int] = []
    index: int | None = None
    if batch and len(loc) >= 2 and loc[0] == "events" and isinstance(loc[1], int):
        index = loc[1]
        head, loc = loc[:2], loc[2:]
    if loc and loc[0] in EVENT_MODELS:  # the discriminated union's tag is not a field
        loc = loc[1:]
    reason = error["msg"]
    if error["type"] in _TAG_ERRORS:
        loc = [*loc, "type"]
    elif error["type"] in _TIME_ERRORS:
        loc = [*loc, "occurred_at"]
    elif error["type"] == "string_pattern_mismatch" and ID_PATTERN in reason:
        reason = ID_PATTERN_REASON  # instead of the pattern
    elif loc[-1:] == ["[key]"] and len(loc) >= 2:  # a map's key, not its value, is wrong
        loc, reason = [*loc[:-2], f"[{json.dumps(loc[-2])}]"], f"Key: {reason}"
    return FieldError(field=_dotted([*head, *loc]), reason=reason, type=error["type"], index=index)


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int) or (part.startswith('["') and part.endswith('"]')):
            text += f"[{part}]" if isinstance(part, int) else part
        else:
            text += f".{part}" if text else part
    return text or "body"


_CALENDAR_START = datetime.min.replace(tzinfo=UTC)


def _earliest(now: datetime, max_past: timedelta | None) -> datetime | None:
    """The earliest event time accepted at `now` (None: any; also when the bound reaches
    before the calendar's start, under a clock set to the distant past)."""
    if max_past is None:
        return None
    try:
        return now - max_past
    except OverflowError:
        return None


def require_json(content_type: str | None, content_encoding: str | None = None) -> None:
    """415 unless the body is declared as JSON (`application/json` or `application/*+json`),
    in UTF-8 (the only charset JSON has, RFC 8259) and not compressed: a gzip body or a
    Latin-1 one would otherwise fail as "malformed JSON" at some byte, which says nothing of
    the cause."""
    media, _, parameters = (content_type or "").partition(";")
    media = media.strip().lower()
    if not (media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )):  # fmt: skip
        raise ProblemError(
            415, "Unsupported media type", "Send the body as 'Content-Type: application/json'."
        )
    charset = _parameter(parameters, "charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ProblemError(
            415, "Unsupported media type",
            f"The body must be UTF-8 JSON; charset {charset!r} is not accepted.",
        )  # fmt: skip
    coding = (content_encoding or "").strip().lower()
    if coding not in ("", "identity"):
        raise ProblemError(
            415, "Unsupported media type",
            f"Send the body uncompressed; Content-Encoding {content_encoding!r} is not accepted.",
        )  # fmt: skip


def _parameter(parameters: str, name: str) -> str | None:
    """A media-type parameter's value (`charset="utf-8"` gives utf-8), or None."""
    for item in parameters.split(";"):
        key, sep, value = item.partition("=")
        if sep and key.strip().lower() == name:
            return value.strip().strip('"')
    return None


async def read_limited(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The body, refused (413) as soon as it exceeds `limit` bytes, whatever it declared."""
    if declares_more_than(declared, limit):
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:  # stop reading now: never buffer more than the limit
            raise body_too_large(limit)
    return bytes(body)


UNKNOWN_TYPE = "unknown"  # the type label of a rejected event whose type is not one we know


def loose_types(data: object, *, batch: bool) -> list[str]:
    """Best-effort event types of a rejected body, for the events counter only."""
    items = data.get("events") if batch and isinstance(data, dict) else [data]
    return [_type_of(item) for item in items] if isinstance(items, list) else []


def _type_of(item: object) -> str:
    kind = item.get("type") if isinstance(item, dict) else None
    return kind if isinstance(kind, str) and kind in EVENT_MODELS else UNKNOWN_TYPE
