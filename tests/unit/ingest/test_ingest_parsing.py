"""Pure request-parsing helpers of ingest: no broker, no HTTP, milliseconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.intake import with_source
from services.ingest.parsing import (
    MAX_REPORTED_ERRORS,
    EventParser,
    decode_json,
    loose_types,
    read_limited,
    require_json,
)
from shared.contracts import CustomerLoggedIn, PurchaseMade
from shared.http import ProblemError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PARSER = EventParser.create(max_events=3, max_future_seconds=300)


def purchase(**fields: Any) -> dict[str, Any]:
    body = {
        "type": "purchase",
        "event_id": "e1",
        "customer_id": "c1",
        "occurred_at": "2026-03-01T11:00:00Z",
        "order_id": "o1",
        "amount": "1",
        "currency": "EUR",
    }
    return {**body, **fields}


def problem_of(call: Any) -> ProblemError:
    with pytest.raises(ProblemError) as caught:
        call()
    return caught.value


@given(st.decimals(min_value=0, max_value=Decimal("999999999999.999999"), places=6))
def test_a_json_number_amount_is_the_exact_decimal(amount: Decimal) -> None:
    raw = f'{{"amount": {amount}}}'.encode()
    data = decode_json(raw)
    [event] = PARSER.validate(purchase(amount=data["amount"]), now=NOW, batch=False)
    assert isinstance(event, PurchaseMade) and event.amount == amount
    assert str(event.amount) == str(amount)


@pytest.mark.parametrize(
    "amount",
    ["\u0661\u0662", "10_000", " 10 ", "1.", ".5", "NaN", "+1", "0x10", "0E-99999999999999999999"],
)
def test_an_amount_as_text_is_plain_json_number_syntax(amount: str) -> None:
    """Decimal("١٢") is 12 and Decimal("10_000") is 10000; a sender meant neither. An
    exponent past what Decimal holds was a 500 (found by the schema fuzz test)."""
    for body in (purchase(amount=amount), purchase(items=[{"sku": "a", "price": amount}])):
        problem = problem_of(lambda body=body: PARSER.validate(body, now=NOW, batch=False))
        assert problem.status == 422 and (problem.errors or [{}])[0]["type"] == "decimal_parsing"


@pytest.mark.parametrize(
    ("amount", "kept"),
    [
        ("0E-1000000", "0.000000"),
        (Decimal("10.500000000000"), "10.500000"),
        ("1.5E-7", None),  # a seventh decimal place is refused, not rounded
        ("12.50", "12.50"),
        ("1E+2", "1E+2"),
        ("-0", "0"),  # passed ge=0 and was kept, and shown, as -0
        ("-0.00", "0.00"),
    ],
)
def test_zeros_past_the_sixth_decimal_place_are_dropped(amount: object, kept: str | None) -> None:
    """Else a valid 0E-1000000 turned a spend of 10.5 into 10.50000000000000000000000000 in
    every later tier change."""
    body = purchase(amount=amount)
    if kept is None:
        assert problem_of(lambda: PARSER.validate(body, now=NOW, batch=False)).status == 422
        return
    [event] = PARSER.validate(body, now=NOW, batch=False)
    assert isinstance(event, PurchaseMade) and str(event.amount) == kept
    assert str(event.amount + Decimal("10.5")) == str(Decimal(kept) + Decimal("10.5"))
    assert len(str(event.amount + Decimal("10.5"))) <= len("10.500000")


def test_decoding_keeps_non_integer_numbers_as_decimals_and_integers_as_ints() -> None:
    assert decode_json(b'{"a": 0.1, "b": 3, "c": 1e2}') == {
        "a": Decimal("0.1"),
        "b": 3,
        "c": Decimal("1E+2"),
    }


@pytest.mark.parametrize("raw", [b"", b"{", b"NaN", b'"\\ud800"', b"\xff", b"[" * 300])
def test_malformed_json_is_a_400_problem(raw: bytes) -> None:
    assert problem_of(lambda: decode_json(raw)).status == 400


def test_batch_errors_name_the_index_and_the_field_path_without_the_union_tag() -> None:
    bad_items = [purchase(), purchase(items=[{"sku": ""}]), {"type": "nope"}]
    problem = problem_of(lambda: PARSER.validate({"events": bad_items}, now=NOW, batch=True))
    assert problem.status == 422
    assert [(e["index"], e["field"], e["type"]) for e in problem.errors or []] == [
        (1, "events[1].items[0].sku", "string_too_short"),
        (2, "events[2].type", "union_tag_invalid"),
    ]


def test_a_wrong_attribute_value_is_one_error_on_the_attribute_and_a_wrong_key_is_named() -> None:
    """Not four errors on `attributes.region.str`, `.int`, `.float` and `.bool`, fields that
    do not exist, nor `attributes..[key]` for an empty key."""
    body = purchase(attributes={"region": {"x": 1}, "": "a", "ok": 1, "big": [1]})
    problem = problem_of(lambda: PARSER.validate({"events": [body]}, now=NOW, batch=True))
    assert problem.detail.startswith("3 validation error(s)")
    errors = problem.errors or []
    assert [(e["field"], e["type"]) for e in errors] == [
        ("events[0].attributes.region", "attribute_type"),
        ('events[0].attributes[""]', "string_too_short"),
        ("events[0].attributes.big", "attribute_type"),
    ]
    assert errors[0]["reason"] == "Input should be a string, a number, a boolean or null"
    assert errors[1]["reason"].startswith("Key: ")


def test_two_different_events_with_one_event_id_in_a_batch_are_refused() -> None:
    """Consumers keep the first event of an id: the second would be lost without a word."""
    first, other = purchase(event_id="same"), purchase(event_id="same", amount="2")
    problem = problem_of(
        lambda: PARSER.validate({"events": [first, purchase(event_id="x"), other]}, now=NOW,
                                batch=True)
    )  # fmt: skip
    assert problem.status == 422 and problem.errors == [{
        "field": "events[2].event_id", "type": "event_id_conflict", "index": 2,
        "reason": "events[0] is a different event with the same event_id",
    }]  # fmt: skip


@pytest.mark.parametrize(("one", "other"), [(True, 1), (1, 1.0), (False, 0.0)])
def test_attribute_values_equal_in_python_but_not_on_the_wire_are_different_events(
    one: object, other: object
) -> None:
    # `True == 1 == 1.0`: both were published and the second dropped as a duplicate.
    first = purchase(event_id="same", attributes={"vip": one})
    second = purchase(event_id="same", attributes={"vip": other})
    problem = problem_of(lambda: PARSER.validate({"events": [first, second]}, now=NOW, batch=True))
    assert [e["type"] for e in problem.errors or []] == ["event_id_conflict"]


def test_the_same_event_twice_in_a_batch_is_a_harmless_resend() -> None:
    events = PARSER.validate({"events": [purchase(), purchase()]}, now=NOW, batch=True)
    assert [e.event_id for e in events] == ["e1", "e1"]


def test_a_single_events_errors_have_plain_field_paths() -> None:
    problem = problem_of(lambda: PARSER.validate(purchase(amount="-1"), now=NOW, batch=False))
    assert problem.errors == [
        {
            "field": "amount",
            "reason": "Input should be greater than or equal to 0",
            "type": "greater_than_equal",
        }
    ]


@pytest.mark.parametrize("padded", [" 42", "42 ", "42\n", "\t42", "\u00a042", "42\u3000", " "])
@pytest.mark.parametrize("field", ["customer_id", "event_id", "order_id"])
def test_an_id_with_whitespace_at_either_end_is_refused_naming_the_field(
    field: str, padded: str
) -> None:
    # " 42" would silently be another customer than "42" (the CSV importer strips cells).
    problem = problem_of(lambda: PARSER.validate(purchase(**{field: padded}), now=NOW,
                                                 batch=False))  # fmt: skip
    assert problem.errors == [{"field": field, "reason": "Must not begin or end with whitespace",
                               "type": "string_pattern_mismatch"}]  # fmt: skip


@pytest.mark.parametrize("inner", ["4 2", "a\nb", "x", "\u200bzero-width\ufeff"])
def test_whitespace_inside_an_id_and_invisible_non_space_characters_pass(inner: str) -> None:
    [event] = PARSER.validate(purchase(customer_id=inner), now=NOW, batch=False)
    assert event.customer_id == inner


@pytest.mark.parametrize(
    ("ahead", "accepted"), [(timedelta(seconds=299), True), (timedelta(seconds=301), False)]
)
def test_occurred_at_may_lead_now_by_the_allowed_skew_only(
    ahead: timedelta, accepted: bool
) -> None:
    event = purchase(occurred_at=(NOW + ahead).isoformat())
    if accepted:
        assert PARSER.validate(event, now=NOW, batch=False)
    else:
        problem = problem_of(lambda: PARSER.validate(event, now=NOW, batch=False))
        assert (problem.errors or [])[0]["field"] == "occurred_at"


@pytest.mark.parametrize(
    ("occurred_at", "kind"),
    [
        ("1772362800", "datetime_type"),  # pydantic alone reads digits as Unix seconds
        ("1772362800000", "datetime_type"),
        ("-99999999999", "datetime_type"),
        ("0", "datetime_type"),
        ("0001-01-01T00:59:59+01:00", "datetime_range"),  # before year 1 in UTC
        ("9999-12-31T23:00:00-01:00", "datetime_range"),  # after year 9999 in UTC
    ],
)
def test_occurred_at_is_iso_text_that_exists_in_utc(occurred_at: str, kind: str) -> None:
    problem = problem_of(
        lambda: PARSER.validate(purchase(occurred_at=occurred_at), now=NOW, batch=False)
    )
    assert [(e["field"], e["type"]) for e in problem.errors or []] == [("occurred_at", kind)]


@pytest.mark.parametrize(
    "occurred_at",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T01:00:00+01:00",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01t00:00:00z",  # pydantic reads lower case; Python's fromisoformat did not
        "9999-12-31 23:59:59.999999z",
    ],
)
def test_the_calendars_first_and_last_instants_are_refused(occurred_at: str) -> None:
    # Postgres stores them as -infinity / infinity and they come back naive: a change dated
    # so stalled the outbox relay (and republished its round) on every retry.
    problem = problem_of(
        lambda: PARSER.validate(purchase(occurred_at=occurred_at), now=NOW, batch=False)
    )
    assert [(e["field"], e["type"]) for e in problem.errors or []] == [
        ("occurred_at", "datetime_range")
    ]


def test_the_calendars_first_microsecond_in_utc_is_a_valid_event_time() -> None:
    event = purchase(occurred_at="0001-01-01T01:00:00.000001+01:00")
    [parsed] = PARSER.validate(event, now=NOW, batch=False)
    assert parsed.occurred_at.astimezone(UTC) == datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


def test_an_event_time_without_a_utc_equivalent_is_refused_from_python_too() -> None:
    at = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(ValidationError, match="after 0001-01-01T00:00:00Z"):
        PurchaseMade.model_validate(purchase(occurred_at=at))


def test_nul_characters_are_located_in_a_valid_batch() -> None:
    events = [purchase(), purchase(customer_id="c\x00", items=[{"sku": "a", "category": "\x00"}])]
    problem = problem_of(lambda: PARSER.refuse_nul({"events": events}, batch=True))
    assert problem.status == 422
    assert [(e["index"], e["field"], e["type"]) for e in problem.errors or []] == [
        (1, "events[1].customer_id", "string_nul"),
        (1, "events[1].items[0].category", "string_nul"),
    ]
    PARSER.refuse_nul({"events": [purchase()]}, batch=True)  # nothing to refuse


def test_a_422_lists_at_most_a_hundred_errors_and_counts_them_all() -> None:
    empty_items: list[dict[str, Any]] = [{}] * 1000  # each lacks its sku: 3,000 errors in all
    events = [purchase(event_id=f"e{i}", items=empty_items) for i in range(3)]
    problem = problem_of(lambda: PARSER.validate({"events": events}, now=NOW, batch=True))
    assert len(problem.errors or []) == MAX_REPORTED_ERRORS == 100
    assert problem.detail.startswith("3000 validation error(s) (100 are listed)")
    assert [e["field"] for e in (problem.errors or [])[:2]] == [
        "events[0].items[0].sku",
        "events[0].items[1].sku",
    ]


def test_wrong_attribute_values_count_once_each_and_fill_the_list() -> None:
    # As a union member each, a wrong value made four errors: 60 of them in an event were
    # counted as 240 and listed as 25.
    attributes: dict[str, object] = {f"a{i}": [] for i in range(60)}
    events = [purchase(event_id=f"e{i}", attributes=attributes) for i in range(3)]
    problem = problem_of(lambda: PARSER.validate({"events": events}, now=NOW, batch=True))
    assert problem.detail.startswith("180 validation error(s) (100 are listed)")
    assert len(problem.errors or []) == 100
    assert {e["type"] for e in problem.errors or []} == {"attribute_type"}


def test_the_bodys_own_errors_are_listed_before_its_events_fill_the_list() -> None:
    empty_items: list[dict[str, Any]] = [{}] * 40  # each lacks its sku: 120 errors in all
    events = [purchase(event_id=f"e{i}", items=empty_items) for i in range(3)]
    body = {"events": events, "dry_run": True}
    problem = problem_of(lambda: PARSER.validate(body, now=NOW, batch=True))
    assert problem.detail.startswith("121 validation error(s) (100 are listed)")
    assert (problem.errors or [])[0]["field"] == "dry_run", problem.errors


@pytest.mark.parametrize(
    ("value", "kind"),
    [(Decimal("1e-400"), "float_underflow"), (Decimal("1e400"), "finite_number")],
)
def test_an_attribute_number_a_float_cannot_hold_is_refused(value: Decimal, kind: str) -> None:
    # 1e-400 was kept as 0.0 without a word.
    event = purchase(attributes={"tiny": value})
    problem = problem_of(lambda: PARSER.validate(event, now=NOW, batch=False))
    assert [(e["field"], e["type"]) for e in problem.errors or []] == [("attributes.tiny", kind)]


def test_a_batch_over_the_limit_is_refused_before_its_items_are_checked() -> None:
    items = [{"junk": True}] * 4
    problem = problem_of(lambda: PARSER.validate({"events": items}, now=NOW, batch=True))
    assert [(e["field"], e["type"]) for e in problem.errors or []] == [("events", "too_long")]


@pytest.mark.parametrize("value", ["3", True, Decimal("3.0")])
def test_integers_must_be_json_integers(value: object) -> None:
    support = {
        "type": "support",
        "event_id": "e",
        "customer_id": "c",
        "occurred_at": "2026-03-01T11:00:00Z",
        "ticket_id": "t",
        "action": "opened",
        "nps": value,
    }
    problem = problem_of(lambda: PARSER.validate(support, now=NOW, batch=False))
    assert (problem.errors or [])[0]["field"] == "nps"


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("APPLICATION/JSON", True),
        ("application/vnd.api+json", True),
        (None, False),
        ("", False),
        ("text/json", False),
        ("application/jsonp", False),
    ],
)
def test_only_json_media_types_pass(content_type: str | None, ok: bool) -> None:
    if ok:
        require_json(content_type)
    else:
        assert problem_of(lambda: require_json(content_type)).status == 415


@pytest.mark.parametrize(
    ("content_type", "encoding", "named"),
    [
        ("application/json; charset=latin-1", None, "latin-1"),
        ('application/json; charset="ISO-8859-1"', None, "ISO-8859-1"),
        ("application/json", "gzip", "gzip"),
        ("application/json; charset=utf-8", "br", "br"),
    ],
)
def test_a_charset_other_than_utf8_or_a_compressed_body_is_a_415_naming_it(
    content_type: str, encoding: str | None, named: str
) -> None:
    """Not a 400 "malformed JSON at byte n", which says nothing of the cause."""
    problem = problem_of(lambda: require_json(content_type, encoding))
    assert problem.status == 415 and repr(named) in problem.detail


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [("application/json; charset=UTF-8", "identity"), ('application/json;charset="utf8"', "")],
)
def test_utf8_and_identity_pass(content_type: str, encoding: str) -> None:
    require_json(content_type, encoding)


def test_a_repeated_key_is_malformed_json_naming_the_key() -> None:
    """The last value would otherwise win silently: a body saying `login` published a
    purchase."""
    problem = problem_of(lambda: decode_json(b'{"type": "login", "amount": 5, "type": "x"}'))
    assert problem.status == 400 and '"type"' in problem.detail


async def chunks(count: int, size: int, seen: list[int]) -> AsyncIterator[bytes]:
    for _ in range(count):
        seen.append(size)
        yield b"x" * size


async def test_reading_stops_at_the_first_chunk_past_the_limit() -> None:
    seen: list[int] = []
    with pytest.raises(ProblemError) as caught:
        await read_limited(chunks(100, 10, seen), None, 35)
    assert caught.value.status == 413 and len(seen) == 4


@pytest.mark.parametrize("declared", ["\u00b2", "1\u00b9", " ", "-5", "abc"])
async def test_a_declared_length_that_is_no_number_is_ignored(declared: str) -> None:
    # "²" (latin-1 0xB2 in a header) is a digit to str.isdigit but not to int()
    seen: list[int] = []
    assert await read_limited(chunks(2, 10, seen), declared, 35) == b"x" * 20


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    seen: list[int] = []
    with pytest.raises(ProblemError):
        await read_limited(chunks(1, 10, seen), "36", 35)
    assert seen == []


async def test_a_body_within_the_limit_is_returned_whole_even_if_the_length_lied() -> None:
    assert await read_limited(chunks(3, 10, []), "5", 35) == b"x" * 30


def test_source_is_filled_only_where_absent() -> None:
    given_source = CustomerLoggedIn(
        event_id="a", customer_id="c", occurred_at=NOW, channel="web", source="crm"
    )
    no_source = given_source.model_copy(update={"event_id": "b", "source": None})
    assert [e.source for e in with_source([given_source, no_source], "shop")] == ["crm", "shop"]


def test_loose_types_of_a_rejected_body_never_fail() -> None:
    assert loose_types({"events": [{"type": "login"}, {"type": "x"}, 5]}, batch=True) == [
        "login",
        "unknown",
        "unknown",
    ]
    assert loose_types({"events": "nope"}, batch=True) == []
    assert loose_types([1], batch=False) == ["unknown"]


def test_an_event_older_than_the_past_bound_is_refused_naming_its_time() -> None:
    # A zero date from a sender's bug made the customer churned at once (default 20 years).
    parser = EventParser.create(max_events=3, max_future_seconds=300, max_past_days=10)
    ten_days = (NOW - timedelta(days=10)).isoformat()
    [kept] = parser.validate(purchase(occurred_at=ten_days), now=NOW, batch=False)
    assert kept.occurred_at == NOW - timedelta(days=10)
    older = (NOW - timedelta(days=10, microseconds=1)).isoformat()
    for when in (older, "1970-01-01T00:00:00Z", "0001-01-02T00:00:00Z"):
        batch = {"events": [purchase(), purchase(event_id="e2", occurred_at=when)]}
        problem = problem_of(lambda b=batch: parser.validate(b, now=NOW, batch=True))
        assert [(e["index"], e["field"], e["type"]) for e in problem.errors or []] == [
            (1, "events[1].occurred_at", "occurred_at_too_old")
        ]
    # Under a clock set to the distant past the bound reaches before year 1: none then.
    early = datetime(1, 1, 5, tzinfo=UTC)
    [event] = parser.validate(purchase(occurred_at="0001-01-02T00:00:00Z"), now=early, batch=False)
    assert event.occurred_at.year == 1
    # Without a bound (INGEST_MAX_PAST_DAYS=0) any time on the calendar is taken.
    assert PARSER.validate(purchase(occurred_at="0001-01-02T00:00:00Z"), now=NOW, batch=False)
