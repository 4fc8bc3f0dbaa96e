"""Event contracts: what ingest accepts, what travels on Kafka, what the scorer emits.

Pydantic v2 models, strict about unknown fields (a typo must not pass silently).
Amounts in events are `Decimal` and serialise as JSON strings, never binary floats. The
feature values a tier change carries (and the read API's spends) are JSON numbers, written
as doubles: a spend beyond 15 significant digits is rounded there (the rules compared the
exact sums).
"""

from __future__ import annotations

import math
import re
from datetime import MAXYEAR, MINYEAR, UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

# No whitespace at either end: " 42" would silently be another customer than "42" (the
# CSV importer strips its cells). Whitespace inside an id is its own business.
# `[\s\S]`, not `(?s:.)`: JSON Schema patterns are ECMAScript's, which has no inline flags
# (a client validating against /v1/schemas could not compile it).
ID_PATTERN = r"^\S([\s\S]*\S)?$"
ID_PATTERN_REASON = "Must not begin or end with whitespace"
ID_MAX_CHARS = 128  # customer, event, order and ticket ids
Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
SHORT_TEXT_MAX_CHARS = 256  # sources, skus, categories, channels, devices
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=SHORT_TEXT_MAX_CHARS)]
AttributeValue = str | int | float | bool | None
# An attribute's text (a region, an industry): a customer keeps 128 attributes, rewritten
# with every event, and each tier change carries them. Unbounded, three logins with a
# 900,000-character value made a 2.7 MB customer row and API answer.
ATTRIBUTE_VALUE_MAX_CHARS = 1024


def _attribute_value(value: object, info: ValidationInfo) -> AttributeValue:
    """An attribute value as it is kept: one error per wrong value.

    As a union, pydantic reported a wrong value once per member (`attributes.region.str`,
    `.int`, ...): four errors on fields that do not exist, which made counts and lists of
    errors wrong. A JSON number must be finite (NaN / Infinity would not survive a round
    trip) and, read as a float, must not lose its magnitude (1e-400 became 0). Text sent to
    ingest (`STRICT_JSON`) holds at most ATTRIBUTE_VALUE_MAX_CHARS characters.
    """
    if isinstance(value, str):
        if len(value) > ATTRIBUTE_VALUE_MAX_CHARS and (info.context or {}).get("strict_json"):
            raise PydanticCustomError(
                "string_too_long", "String should have at most {max_length} characters",
                {"max_length": ATTRIBUTE_VALUE_MAX_CHARS},
            )  # fmt: skip
        return value
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, Decimal):  # ingest decodes JSON numbers as exact Decimals
        number = float(value)
        if number == 0 and value != 0:
            raise PydanticCustomError(
                "float_underflow", "Input should be a number a float can hold (this one reads as 0)"
            )
        value = number
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    raise PydanticCustomError(
        "attribute_type", "Input should be a string, a number, a boolean or null"
    )


_JSON_TYPES = ("string", "integer", "number", "boolean", "null")
_ATTRIBUTE_SCHEMA = {
    "anyOf": [
        {"type": t, **({"maxLength": ATTRIBUTE_VALUE_MAX_CHARS} if t == "string" else {})}
        for t in _JSON_TYPES
    ]
}
EventAttributeValue = Annotated[
    AttributeValue, PlainValidator(_attribute_value), WithJsonSchema(_ATTRIBUTE_SCHEMA)
]
ATTRIBUTE_KEY_MAX_CHARS = 64
# An attribute's name as ingest accepts it (and a rules condition may name); ingest also
# refuses a NUL character in it (`nul_paths`), as in every text.
AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=ATTRIBUTE_KEY_MAX_CHARS)]
Attributes = Annotated[dict[AttributeKey, EventAttributeValue], Field(max_length=64)]


def _time_as_text(value: object) -> object:
    """Event times travel as ISO 8601 text that starts with the date, and must exist in UTC.

    pydantic alone would read a bare number, and a string of digits too, as Unix seconds or
    milliseconds: an `occurred_at` of "1700000000" is far likelier a mistake than a wish.
    A time on the calendar's first or last day may have no UTC equivalent
    (0001-01-01T00:00:00+01:00); every consumer converts to UTC, so that is refused here,
    not left to fail in the scorer or in Postgres after ingest accepted it.
    """
    if isinstance(value, str):
        if len(value) < 10 or value[4] != "-":  # a date first, YYYY-MM-DD
            raise _not_iso()
        if value.startswith(_EDGE_DAYS):
            _check_utc_range(value)
    elif isinstance(value, datetime):
        _check_utc_range(value)
    else:
        raise _not_iso()
    return value


_EDGE_DAYS = (f"{MINYEAR:04}-01-01", f"{MAXYEAR:04}-12-31")
_DATETIME = TypeAdapter(datetime)  # only for the edge days: not on the hot path


def _not_iso() -> PydanticCustomError:
    return PydanticCustomError("datetime_type", "Input should be an ISO 8601 date-time string")


def _check_utc_range(value: str | datetime) -> None:
    try:  # pydantic's own parser: it reads what Python's does not ("…T00:00:00z")
        at = _DATETIME.validate_python(value) if isinstance(value, str) else value
    except ValueError:
        return  # not a time at all: the field's own validation reports it
    if not exists_in_utc(at):
        raise PydanticCustomError("datetime_range", TIME_RANGE_REASON)


TIME_RANGE_REASON = (
    "Input should lie after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z"
    " once converted to UTC"
)
# The calendar's first and last instants: asyncpg writes them as Postgres's -infinity and
# infinity, and reads those back as naive times, which no aware time can be compared with.
_ENDS = (datetime.min, datetime.max)


def exists_in_utc(at: datetime) -> bool:
    """Whether a time converts to UTC and back out of Postgres unchanged: strictly inside
    Python's calendar (see TIME_RANGE_REASON; naive times are taken as UTC)."""
    if MINYEAR < at.year < MAXYEAR:
        return True
    try:
        utc = at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        return False
    return utc not in _ENDS


EventTime = Annotated[AwareDatetime, BeforeValidator(_time_as_text)]

# How JSON spells the one character Postgres text cannot hold. A raw NUL byte is not valid
# JSON, so a body without this escape holds no NUL and needs no closer look.
NUL_ESCAPE = b"\\u0000"
NUL_REASON = "Text must not contain a NUL character (U+0000)"


def refuse_nul(text: str) -> str:
    """`text`, unless it holds a NUL character (ValueError): Postgres text cannot hold one."""
    if "\x00" in text:
        raise ValueError(NUL_REASON)
    return text


def nul_paths(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where a NUL character hides in decoded JSON; a key holding one counts at its object.

    Checked outside the models: a pattern on every text field made validating an event
    30 % slower (pydantic-core's regex), to guard against a character almost no one sends.
    """
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    found: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                found.append(path)
            found += nul_paths(item, (*path, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += nul_paths(item, (*path, index))
    return found


_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_MICRO = Decimal("0.000001")


def _money(value: object) -> object:
    """An amount or price as written in JSON: a number, or text in JSON number syntax.

    Python's Decimal reads more than that ("١٢", "10_000", " 10 "), and keeps the exponent it
    was given: a valid 0E-1000000 added to a spend of 10.5 gives
    10.50000000000000000000000000, which would then travel in every tier change. Zeros past
    the sixth decimal place are dropped; digits there stay for `decimal_places` to refuse.
    A negative zero becomes a zero (it passed `ge=0` and was stored, and shown, as -0).
    """
    if isinstance(value, str):
        if _DECIMAL_TEXT.fullmatch(value) is None:
            raise PydanticCustomError(
                "decimal_parsing", "Input should be a decimal number such as 12.50"
            )
        try:
            value = Decimal(value)
        except InvalidOperation:  # an exponent past the context's ("1e9999999999"): was a 500
            raise PydanticCustomError(
                "decimal_parsing", "Input should be a decimal number such as 12.50"
            ) from None
    if isinstance(value, Decimal) and value.is_finite():
        if value.is_zero() and value.is_signed():  # -0 (and -0.00): a zero, shown unsigned
            value = abs(value)
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -6:
            try:
                exact = value.quantize(_MICRO)
            except InvalidOperation:  # more digits than the context holds: max_digits refuses
                return value
            if exact == value:
                return exact
    return value


def _money_schema(schema: dict[str, Any]) -> None:
    """Text amounts in the JSON Schema take the pattern `_money` reads: a generator (or a
    sender) reading the schema made text that could never be an amount."""
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "string":
            branch["pattern"] = f"^{_DECIMAL_TEXT.pattern}$"


Money = Annotated[Decimal, BeforeValidator(_money), Field(json_schema_extra=_money_schema)]


# Validation context of what a sender may send (ingest validates decoded JSON with it): an
# integer field takes only a JSON integer (no "3", no true), and an attribute's text is
# bounded. CSV import and Python callers keep lax coercion; records already on a topic are
# read without it (one accepted before a bound existed stays readable).
STRICT_JSON: dict[str, Any] = {"strict_json": True}


def _int_from_json(value: object, info: ValidationInfo) -> object:
    if (info.context or {}).get("strict_json") and (
        isinstance(value, bool) or not isinstance(value, int)
    ):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_int_from_json)]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def _type_is_required(schema: dict[str, Any]) -> None:
    """`type` has a Python default but is the union's discriminator: senders must send it."""
    if "type" in schema.get("properties", {}):
        schema["required"] = ["type", *[r for r in schema.get("required", []) if r != "type"]]


class _EventBase(_Contract):
    model_config = ConfigDict(json_schema_extra=_type_is_required)

    event_id: Id = Field(
        description="Client-supplied idempotency key, 1-128 characters, no whitespace at"
        " either end. Unique across every event sent to Tierstream, of every type and source:"
        " an event whose id was seen before is dropped as a repeat, whatever its customer or"
        " type, so systems that number their own events should prefix them (`orders-17`)."
    )
    customer_id: Id = Field(
        description="The customer this event belongs to, 1-128 characters, no whitespace at"
        " either end."
    )
    occurred_at: EventTime = Field(
        description="Event time, ISO 8601 with a timezone (naive timestamps are rejected)."
    )
    source: ShortText | None = Field(
        None, description="Sending system; filled from the API key's source name when absent."
    )
    attributes: Attributes | None = Field(
        None,
        description="Flat map of customer attributes (region, industry, size, ...), at most 64;"
        " the latest value of each wins, and a customer keeps the 128 set most recently.",
    )


class LineItem(_Contract):
    sku: ShortText
    quantity: JsonInt = Field(1, ge=1, le=1_000_000)
    price: Money | None = Field(None, ge=0, max_digits=18, decimal_places=6)
    category: ShortText | None = None


class PurchaseMade(_EventBase):
    """A purchase (or a refund, when `refund_of` names the refunded order)."""

    type: Literal["purchase"] = "purchase"
    order_id: Id
    amount: Money = Field(
        ge=0,
        max_digits=18,
        decimal_places=6,
        description="Order value, >= 0, as a JSON number or string.",
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 4217 code, three capital letters. Amounts are summed as sent,"
        " whatever their currency (no conversion): send every amount in one currency."
    )
    items: Annotated[list[LineItem], Field(max_length=1000)] | None = None
    category: ShortText | None = None
    refund_of: Id | None = Field(
        None,
        description="order_id this purchase refunds; its `amount` (>= 0) is the sum refunded,"
        " taken off the customer's spend, and its own `order_id` the refund's.",
    )


class LoginChannel(StrEnum):
    WEB = "web"
    APP = "app"
    API = "api"
    OTHER = "other"


class CustomerLoggedIn(_EventBase):
    """A login through some channel."""

    type: Literal["login"] = "login"
    channel: ShortText = Field(description="web, app, api, ...")
    device: ShortText | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = Field(
        None, description="ISO 3166-1 alpha-2 country of the login."
    )


class SupportAction(StrEnum):
    """What happened to a ticket. `resolved` and `closed` end it (help desks use either);
    every other action leaves it, or makes it, open."""

    OPENED = "opened"
    REPLIED = "replied"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"


TICKET_ENDED = frozenset({SupportAction.RESOLVED.value, SupportAction.CLOSED.value})


class SupportTicketUpdated(_EventBase):
    """A support ticket event, optionally carrying CSAT (1-5) or NPS (0-10)."""

    type: Literal["support"] = "support"
    ticket_id: Id
    action: SupportAction
    satisfaction: JsonInt | None = Field(None, ge=1, le=5, description="CSAT 1-5.")
    nps: JsonInt | None = Field(None, ge=0, le=10, description="NPS 0-10.")


CustomerEvent = Annotated[
    PurchaseMade | CustomerLoggedIn | SupportTicketUpdated, Field(discriminator="type")
]
EVENT_MODELS: dict[str, type[PurchaseMade | CustomerLoggedIn | SupportTicketUpdated]] = {
    "purchase": PurchaseMade,
    "login": CustomerLoggedIn,
    "support": SupportTicketUpdated,
}
customer_event_adapter: TypeAdapter[PurchaseMade | CustomerLoggedIn | SupportTicketUpdated] = (
    TypeAdapter(CustomerEvent)
)


def parse_event(raw: bytes | str) -> PurchaseMade | CustomerLoggedIn | SupportTicketUpdated:
    """Decode one event from its JSON wire form (raises pydantic.ValidationError)."""
    return customer_event_adapter.validate_json(raw)


class Dimension(StrEnum):
    VALUE_TIER = "value_tier"
    ACTIVITY_LEVEL = "activity_level"
    LIFECYCLE_STAGE = "lifecycle_stage"


class ChangeCause(StrEnum):
    EVENT = "event"
    TIME = "time"
    REBUCKET = "rebucket"
    RULE_CHANGE = "rule_change"


class TierChanged(_Contract):
    """One customer moved from one class to another on one dimension."""

    id: Id = Field(
        description="Stable id of this change, 1-128 characters; subscribers de-duplicate by it."
    )
    customer_id: Id
    dimension: Dimension
    from_: str | None = Field(
        alias="from", description="Previous class (null when first classified)."
    )
    to: str
    cause: ChangeCause
    rule: str = Field(description="Name of the rule that matched.")
    features: dict[str, Any] = Field(description="The feature values the rule read.")
    rules_version: str
    occurred_at: AwareDatetime = Field(
        description="When the change happened: the event time of the trigger (cause `event`),"
        " the instant a time threshold was passed (cause `time`, even when the scorer noticed"
        " it later), or the evaluation time (rule changes, rebucketing)."
    )
    emitted_at: AwareDatetime
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True,
        json_schema_serialization_defaults_required=True,  # the record always has them all
    )  # fmt: skip

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


TIER_CHANGED_TYPE = "com.tierstream.tier-changed.v1"


def event_ce_type(event_type: str) -> str:
    """CloudEvents `type` for a customer event type."""
    return f"com.tierstream.{event_type}.v1"
