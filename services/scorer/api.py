"""The read API: customers as of the scorer's now, their change history, class counts, and
the schema of what the scorer publishes."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from services.scorer import queries
from services.scorer.db import RequestDatabase
from services.scorer.queries import StoredChange, StoredCustomer
from shared.clock import Clock
from shared.contracts import ID_MAX_CHARS, AttributeValue, Dimension, TierChanged
from shared.domain.features import compute_features, features_to_json
from shared.domain.state import attributes_of, prune
from shared.http import (
    KEYED_NO_UNKNOWN_QUERY,
    PROBLEM_JSON,
    PROBLEM_RESPONSES,
    ProblemError,
    SourceDep,
    invalid_query,
)  # fmt: skip

JsonValue = int | float | str | bool | None
# Postgres text cannot hold NUL: refuse it as input (422) instead of failing the query (500).
NO_NUL = r"^[^\x00]*$"
CustomerId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=NO_NUL)]
# An instant with a zone, as RFC 3339 spells it (no bare dates, no epoch numbers).
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
# The longest cursor: a customer id of 128 four-byte characters, in base64 (683).
CURSOR_MAX_CHARS = -(-ID_MAX_CHARS * 4 * 4 // 3)
Cursor = Annotated[
    str | None,
    Query(max_length=CURSOR_MAX_CHARS, description="`next_cursor` of the previous page."),
]
ClassFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown customer", "content": {PROBLEM_JSON: {}}}
}


class CustomerView(BaseModel):
    """A customer's features as of the scorer's now and its stored classification."""

    customer_id: str
    recency_days: float | None = Field(description="Days since the latest purchase.")
    frequency_365d: int
    monetary_365d: float
    lifetime_orders: int
    lifetime_spend: float
    avg_order_value: float | None
    logins_30d: int
    last_login_at: datetime | None
    last_activity_at: datetime | None
    open_tickets: int
    latest_nps: int | None
    r_score: int
    f_score: int
    m_score: int
    value_tier: str
    activity_level: str
    lifecycle_stage: str
    rules_version: str
    updated_at: datetime
    attributes: dict[str, AttributeValue]
    features: dict[str, JsonValue] = Field(description="Every catalogue feature as of now.")


class CustomerPage(BaseModel):
    items: list[CustomerView]
    next_cursor: str | None


class ChangeView(BaseModel):
    """One tier change: the tier-changed record's fields, its order and publication time."""

    id: str
    seq: int = Field(
        description="The change's place in its customer's changes, the record's"
        " `tierstream_seq` header: of two changes of one customer and dimension the higher"
        " seq is the later decision (times do not order them: a late event's change is dated"
        " at that event)."
    )
    customer_id: str
    dimension: Dimension
    from_: str | None = Field(alias="from", serialization_alias="from")
    to: str
    cause: str
    rule: str
    features: dict[str, Any]
    attributes: dict[str, AttributeValue] = Field(
        description="The customer's attributes when the change was decided."
    )
    rules_version: str
    occurred_at: datetime
    emitted_at: datetime
    published_at: datetime | None


class ChangePage(BaseModel):
    items: list[ChangeView]
    next_cursor: str | None


class FeedPage(ChangePage):
    tail_cursor: str | None = Field(
        description="Position after this page's last change, or, on the feed's last page, "
        "after the last change published, whether or not it matched the filters (the "
        "cursor sent, while nothing is published): ask again with it later for only the "
        "changes published since."
    )


class TierStats(BaseModel):
    """How many customers hold each class, per dimension."""

    customers: int
    value_tier: dict[str, int]
    activity_level: dict[str, int]
    lifecycle_stage: dict[str, int]


def customer_view(stored: StoredCustomer, *, now: datetime) -> CustomerView:
    """Features at `now` plus the stored classification."""
    state, row = stored.record.state, stored.row
    prune(state, now=now)
    f = compute_features(state, now=now)
    return CustomerView(
        customer_id=state.customer_id, recency_days=_float(f["days_since_last_purchase"]),
        frequency_365d=int(f["purchases_365d"] or 0), monetary_365d=_float(f["spend_365d"]) or 0.0,
        lifetime_orders=int(f["lifetime_orders"] or 0),
        lifetime_spend=_float(f["lifetime_spend"]) or 0.0,
        avg_order_value=_float(f["avg_order_value"]), logins_30d=int(f["logins_30d"] or 0),
        last_login_at=state.last_login_at, last_activity_at=state.last_activity_at,
        open_tickets=int(f["open_tickets"] or 0), latest_nps=_int(f["latest_nps"]),
        r_score=row["r_score"], f_score=row["f_score"], m_score=row["m_score"],
        value_tier=row["value_tier"], activity_level=row["activity_level"],
        lifecycle_stage=row["lifecycle_stage"], rules_version=row["rules_version"],
        updated_at=row["updated_at"], attributes=attributes_of(state), features=features_to_json(f),
    )  # fmt: skip


def change_view(stored: StoredChange) -> ChangeView:
    c = stored.change
    return ChangeView.model_validate(
        {"id": c.id, "seq": stored.seq, "customer_id": c.customer_id, "dimension": c.dimension,
         "from": c.from_class, "to": c.to_class, "cause": c.cause.value, "rule": c.rule,
         "features": c.features, "attributes": c.attributes, "rules_version": c.rules_version,
         "occurred_at": c.occurred_at, "emitted_at": c.emitted_at,
         "published_at": stored.published_at}
    )  # fmt: skip


def encode_cursor(value: str) -> str:
    """An opaque cursor for a position."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The position in a cursor; 422 when it was not made by `encode_cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        if "\x00" in position:
            raise ValueError("NUL in a cursor")
        return position
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _invalid_cursor() from exc


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float | Decimal) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def _database(request: Request) -> RequestDatabase:
    database: RequestDatabase = request.app.state.database
    return database


def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock.now()


class CustomerIdConvertor(Convertor[str]):
    """Starlette's `path` convertor (ids may hold a slash) that also matches a newline:
    `path` is `.*`, and `.` stops at a newline, which a customer id may contain."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def read_router() -> APIRouter:
    """Routes of the read API (API key required)."""
    register_url_convertor("customer_id", CustomerIdConvertor())  # idempotent; before the routes
    router = APIRouter(
        prefix="/v1",
        tags=["customers"],
        responses=PROBLEM_RESPONSES,
        dependencies=KEYED_NO_UNKNOWN_QUERY,
    )

    @router.get("/customers", summary="Customers, filtered by class, in id order")
    async def list_customers(
        request: Request, _: SourceDep, value_tier: ClassFilter = None,
        lifecycle_stage: ClassFilter = None, activity_level: ClassFilter = None,
        limit: Limit = 50, cursor: Cursor = None,
    ) -> CustomerPage:  # fmt: skip
        wanted = {Dimension.VALUE_TIER: value_tier, Dimension.LIFECYCLE_STAGE: lifecycle_stage,
                  Dimension.ACTIVITY_LEVEL: activity_level}  # fmt: skip
        classes = {d: v for d, v in wanted.items() if v is not None}
        after = decode_cursor(cursor) if cursor else None
        async with _database(request).connection() as conn:
            rows = await queries.list_customers(conn, classes=classes, after=after, limit=limit + 1)
        now = _now(request)
        items = [customer_view(row, now=now) for row in rows[:limit]]
        more = len(rows) > limit
        return CustomerPage(
            items=items, next_cursor=encode_cursor(items[-1].customer_id) if more else None
        )

    @router.get(
        "/changes",
        summary="Published tier changes of every customer, in publication order",
        description="The tier-changed topic's content as pages: a change appears once the "
        "relay has published it (usually within a second), and a cursor never passes a "
        "change that is published later, so paging to the end and then polling with "
        "`tail_cursor` misses nothing. A customer's own history (`/customers/{id}/changes`) "
        "also lists changes not yet published.",
    )
    async def list_all_changes(
        request: Request,
        _: SourceDep,
        since: Annotated[
            str | None,
            Query(
                pattern=RFC3339,
                description="Only changes that occurred at or after this instant "
                "(RFC 3339 with a zone, e.g. 2026-01-01T00:00:00Z).",
                json_schema_extra={"format": "date-time"},
            ),
        ] = None,
        dimension: Annotated[Dimension | None, Query(description="Only this dimension.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> FeedPage:
        after = _seq(decode_cursor(cursor)) if cursor else None
        since_at = _instant(since) if since else None
        async with (
            _database(request).connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),  # one snapshot
        ):
            rows = await queries.list_all_changes(
                conn, since=since_at, dimension=dimension.value if dimension else None,
                after_seq=after, limit=limit + 1,
            )  # fmt: skip
            # At the feed's end every publication up to its last was read, the filters' misses
            # too: the tail starts after them, or each poll of a filter matching nothing (a
            # `since` ahead, a dimension yet to change) read the whole history again.
            end = await queries.feed_end(conn) if len(rows) <= limit else None
        page = rows[:limit]
        read = [row.position for row in page] + [n for n in (after, end) if n is not None]
        last = max(read, default=None)
        return FeedPage(
            items=[change_view(row) for row in page],
            next_cursor=encode_cursor(str(page[-1].position)) if len(rows) > limit else None,
            tail_cursor=encode_cursor(str(last)) if last is not None else cursor,
        )

    # Ids may contain `/` and newlines (CustomerIdConvertor); the history route goes first, or
    # the customer route would read `<id>/changes` as an id. An id ending in `/changes` is
    # read as history.
    @router.get(
        "/customers/{customer_id:customer_id}/changes",
        responses=NOT_FOUND,
        summary="Tier-change history",
    )
    async def list_changes(
        customer_id: CustomerId,
        request: Request,
        _: SourceDep,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ChangePage:
        async with _database(request).connection() as conn:
            if await queries.fetch_customer(conn, customer_id) is None:
                raise ProblemError(
                    404, "Customer not found", f"No customer {customer_id!r} is known."
                )
            after = _seq(decode_cursor(cursor)) if cursor else None
            rows = await queries.list_changes(conn, customer_id, after_seq=after, limit=limit + 1)
        items = [change_view(row) for row in rows[:limit]]
        more = len(rows) > limit
        return ChangePage(
            items=items, next_cursor=encode_cursor(str(rows[limit - 1].position)) if more else None
        )

    @router.get("/customers/{customer_id:customer_id}", responses=NOT_FOUND, summary="One customer")
    async def get_customer(customer_id: CustomerId, request: Request, _: SourceDep) -> CustomerView:
        async with _database(request).connection() as conn:
            stored = await queries.fetch_customer(conn, customer_id)
        if stored is None:
            raise ProblemError(404, "Customer not found", f"No customer {customer_id!r} is known.")
        return customer_view(stored, now=_now(request))

    @router.get("/stats/tiers", summary="Customers per class and dimension")
    async def tier_stats(request: Request, _: SourceDep) -> TierStats:
        async with _database(request).connection() as conn:
            total, counts = await queries.count_classes(conn)
        return TierStats(
            customers=total, value_tier=counts[Dimension.VALUE_TIER],
            activity_level=counts[Dimension.ACTIVITY_LEVEL],
            lifecycle_stage=counts[Dimension.LIFECYCLE_STAGE],
        )  # fmt: skip

    @router.get(
        "/schemas/tier-changed",
        summary="JSON Schema of a tier-changed record's value",
        description="What the scorer publishes on the tier-changed topic (docs/SUBSCRIBING.md"
        " says what its headers and order mean).",
    )
    async def tier_changed_schema(_: SourceDep) -> dict[str, Any]:
        return tier_changed_schema_document()

    return router


@cache
def tier_changed_schema_document() -> dict[str, Any]:
    """The JSON Schema of `TierChanged` as it is written (`from`, not `from_`)."""
    return TierChanged.model_json_schema(by_alias=True, mode="serialization")


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:  # matched the pattern, yet no such instant (e.g. month 13)
        raise invalid_query("since", "No such date or time (e.g. month 13)", "datetime") from exc
    try:  # Postgres stores UTC: an offset can carry year 1 or 9999 out of range
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise invalid_query(
            "since", "Outside years 1-9999 once converted to UTC", "datetime_range"
        ) from exc


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # "²".isdigit() too
        raise _invalid_cursor()
    return int(text)


def _invalid_cursor() -> ProblemError:
    return invalid_query("cursor", "Not a cursor this API handed out: pass `next_cursor`", "cursor")
