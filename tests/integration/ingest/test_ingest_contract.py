"""The ingest HTTP contract, rule by rule, against the real broker (issue 3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_helpers import (
    AUTH,
    header,
    login,
    purchase,
    read_records,
    support,
    topics_of,
    with_event_id,
)

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


@pytest.mark.parametrize("make", [purchase, login, support], ids=["purchase", "login", "support"])
async def test_each_event_type_is_accepted_with_its_event_id(
    client: httpx.AsyncClient, make: Any
) -> None:
    event = make()
    response = await client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"accepted": 1, "event_ids": [event["event_id"]]}


async def test_a_mixed_batch_is_accepted_and_lists_ids_in_request_order(
    client: httpx.AsyncClient,
) -> None:
    events = [purchase(), login(), support(), purchase()]
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 4, "event_ids": [e["event_id"] for e in events]}


@pytest.mark.parametrize(
    ("raw_amount", "expected"),
    [
        ("0.1", "0.1"),
        ('"0.1"', "0.1"),
        ("123456789012.123456", "123456789012.123456"),
        ('"7"', "7"),
        ("0", "0"),
    ],
)
async def test_amount_as_json_number_or_string_is_published_as_the_exact_decimal(
    client: httpx.AsyncClient, settings: IngestSettings, raw_amount: str, expected: str
) -> None:
    event = purchase()
    body = json.dumps(event).replace('"amount": "19.99"', f'"amount": {raw_amount}')
    assert raw_amount in body
    response = await client.post(
        "/v1/events", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 202, response.text
    topic = topics_of(settings).purchases
    records = await read_records(settings, topic, until=with_event_id(event["event_id"]))
    assert json.loads(records[-1].value)["amount"] == expected


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"",
        b"[1,]",
        b'{"type": "login"} trailing',
        b'{"event_id": "\xff\xfe"}',
        b'{"event_id": "\\ud800"}',
        b"{'single': 'quotes'}",
    ],
    ids=[
        "truncated",
        "empty",
        "trailing-comma",
        "trailing-garbage",
        "bad-utf8",
        "lone-surrogate",
        "single-quotes",
    ],
)
@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, path: str, body: bytes) -> None:
    response = await client.post(
        path, content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert "JSON" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic c2hvcDprZXk="},
        {"Authorization": "Bearer "},
        {"Authorization": AUTH["Authorization"] + "x"},
    ],
    ids=["missing", "wrong", "basic-scheme", "empty-token", "key-prefix"],
)
@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
async def test_missing_or_wrong_api_key_is_401(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    response = await client.post(path, json={"events": [purchase()]}, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_the_key_is_checked_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    huge = b"[" * (2 * 1024 * 1024)
    response = await client.post(
        "/v1/events", content=huge, headers={"content-type": "application/json"}
    )
    assert_problem(response, 401)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ],
)
async def test_a_body_not_declared_as_json_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
    response = await client.post("/v1/events", content=json.dumps(purchase()), headers=headers)
    assert_problem(response, 415)


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/cloudevents+json"],
)
async def test_json_media_types_with_parameters_are_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    headers = {**AUTH, "content-type": content_type}
    response = await client.post("/v1/events", content=json.dumps(login()), headers=headers)
    assert response.status_code == 202, response.text


def in_minutes(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


INVALID_EVENTS: list[tuple[str, Callable[[], dict[str, Any]], str, str]] = [
    ("unknown-field", lambda: purchase(amout="1"), "amout", "extra_forbidden"),
    (
        "naive-timestamp",
        lambda: login(occurred_at="2025-01-01T10:00:00"),
        "occurred_at",
        "timezone_aware",
    ),
    ("date-only", lambda: login(occurred_at="2025-01-01"), "occurred_at", "timezone_aware"),
    ("unix-number", lambda: login(occurred_at=1735725600), "occurred_at", "datetime_type"),
    ("unix-text", lambda: login(occurred_at="1735725600"), "occurred_at", "datetime_type"),
    ("unix-ms-text", lambda: login(occurred_at="1735725600000"), "occurred_at", "datetime_type"),
    (
        "before-year-1-in-utc",
        lambda: login(occurred_at="0001-01-01T00:00:00+01:00"),
        "occurred_at",
        "datetime_range",
    ),
    ("nul-in-id", lambda: login(customer_id="c\x00"), "customer_id", "string_nul"),
    (
        "nul-in-attribute-key",
        lambda: login(attributes={"re\x00gion": "eu"}),
        "attributes",
        "string_nul",
    ),
    (
        "nul-in-line-item",
        lambda: purchase(items=[{"sku": "a"}, {"sku": "\x00"}]),
        "items[1].sku",
        "string_nul",
    ),
    ("future", lambda: login(occurred_at=in_minutes(10)), "occurred_at", "occurred_at_in_future"),
    (  # kept with the customer and carried by every tier change
        "long-attribute",
        lambda: login(attributes={"region": "x" * 1025}),
        "attributes.region",
        "string_too_long",
    ),
    (  # a sender's zero date: over INGEST_MAX_PAST_DAYS (20 years) ago
        "unix-epoch",
        lambda: login(occurred_at="1970-01-01T00:00:00Z"),
        "occurred_at",
        "occurred_at_too_old",
    ),
    ("lowercase-currency", lambda: purchase(currency="eur"), "currency", "string_pattern_mismatch"),
    ("long-currency", lambda: purchase(currency="EURO"), "currency", "string_pattern_mismatch"),
    ("currency-newline", lambda: purchase(currency="EUR\n"), "currency", "string_pattern_mismatch"),
    ("negative-amount", lambda: purchase(amount=-1), "amount", "greater_than_equal"),
    ("text-amount", lambda: purchase(amount="ten"), "amount", "decimal_parsing"),
    ("bool-amount", lambda: purchase(amount=True), "amount", "decimal_type"),
    ("seven-decimals", lambda: purchase(amount="1.0000001"), "amount", "decimal_max_places"),
    ("empty-event-id", lambda: login(event_id=""), "event_id", "string_too_short"),
    ("long-event-id", lambda: login(event_id="e" * 129), "event_id", "string_too_long"),
    ("numeric-customer-id", lambda: login(customer_id=42), "customer_id", "string_type"),
    (
        "missing-order-id",
        lambda: {k: v for k, v in purchase().items() if k != "order_id"},
        "order_id",
        "missing",
    ),
    ("unknown-type", lambda: login(type="refund"), "type", "union_tag_invalid"),
    (
        "no-type",
        lambda: {k: v for k, v in login().items() if k != "type"},
        "type",
        "union_tag_not_found",
    ),
    ("csat-6", lambda: support(satisfaction=6), "satisfaction", "less_than_equal"),
    ("nps-11", lambda: support(nps=11), "nps", "less_than_equal"),
    ("csat-as-text", lambda: support(satisfaction="3"), "satisfaction", "int_type"),
    ("unknown-action", lambda: support(action="deleted"), "action", "enum"),
    (
        "nested-attribute",
        lambda: login(attributes={"region": {"eu": True}}),
        "attributes.region",
        "attribute_type",
    ),
    (
        "bad-line-item",
        lambda: purchase(items=[{"sku": "a", "quantity": 0}]),
        "items[0].quantity",
        "greater_than_equal",
    ),
]


@pytest.mark.parametrize(
    ("event", "field", "kind"), [c[1:] for c in INVALID_EVENTS], ids=[c[0] for c in INVALID_EVENTS]
)
async def test_an_invalid_event_is_422_naming_the_field(
    client: httpx.AsyncClient, event: Callable[[], dict[str, Any]], field: str, kind: str
) -> None:
    body = assert_problem(await client.post("/v1/events", json=event(), headers=AUTH), 422)
    assert {"field": field, "type": kind} in [
        {"field": e["field"], "type": e["type"]} for e in body["errors"]
    ], body["errors"]
    assert all(e["reason"] for e in body["errors"])


async def test_an_event_just_inside_the_allowed_clock_skew_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/events", json=login(occurred_at=in_minutes(4)), headers=AUTH)
    assert response.status_code == 202, response.text


async def test_a_bad_batch_lists_every_bad_item_and_publishes_nothing(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    customer = "cust-all-or-nothing"
    events = [purchase(customer_id=customer) for _ in range(5)]
    events[1]["amount"] = "-5"
    events[3] |= {"currency": "usd", "occurred_at": "2025-01-01T00:00:00", "bogus": 1}
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    errors = assert_problem(response, 422)["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {
        (1, "events[1].amount"),
        (3, "events[3].currency"),
        (3, "events[3].occurred_at"),
        (3, "events[3].bogus"),
    }
    # Same customer, same partition: once the marker is read, anything before it would be too.
    marker = purchase(customer_id=customer)
    assert (await client.post("/v1/events", json=marker, headers=AUTH)).status_code == 202
    topic = topics_of(settings).purchases
    records = await read_records(settings, topic, until=with_event_id(marker["event_id"]))
    assert [header(r, "ce_id") for r in records] == [marker["event_id"]]


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        ({"events": []}, "events", "too_short"),
        ({"events": [login()] * 1001}, "events", "too_long"),
        ({"events": [login()], "dry_run": True}, "dry_run", "extra_forbidden"),
        ({"events": login()}, "events", "list_type"),
        ([login()], "body", "model_type"),
    ],
    ids=["empty", "over-limit", "unknown-field", "not-a-list", "bare-array"],
)
async def test_batch_limits_and_shape_are_422(
    client: httpx.AsyncClient, body: Any, field: str, kind: str
) -> None:
    response = await client.post("/v1/events/batch", json=body, headers=AUTH)
    errors = assert_problem(response, 422)["errors"]
    assert [(e["field"], e["type"]) for e in errors] == [(field, kind)]


async def test_a_batch_of_exactly_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    events = [login(customer_id=f"c{i % 50}") for i in range(1000)]
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1000


async def test_a_query_parameter_the_route_does_not_read_is_422_and_nothing_is_published(
    client: httpx.AsyncClient,
) -> None:
    # It was ignored: `?dry_run=true` published the event.
    response = await client.post("/v1/events?dry_run=true", json=login(), headers=AUTH)
    errors = assert_problem(response, 422)["errors"]
    assert [(e["field"], e["type"]) for e in errors] == [("query.dry_run", "query_unknown")]


@pytest.mark.parametrize("path", ["/v1/events/", "/v1/events/batch/"])
async def test_a_trailing_slash_is_a_404_problem_not_a_bare_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    # It was a 307 with an empty body, to the scheme the request came on.
    assert_problem(await client.post(path, json=login(), headers=AUTH), 404)


async def test_a_body_with_a_byte_order_mark_is_400_saying_so(client: httpx.AsyncClient) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(login()).encode()
    response = await client.post("/v1/events", content=body,
                                 headers={**AUTH, "content-type": "application/json"})  # fmt: skip
    assert "byte order mark" in assert_problem(response, 400)["detail"]
