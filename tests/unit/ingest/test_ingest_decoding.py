"""The one-pass body decoding and the fast validation path give what the slow ones gave."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import from_json

from services.ingest.intake import with_source
from services.ingest.parsing import (
    EventParser,
    decode_json,
    describe_error,
    refuse_conflicting_ids,
)  # fmt: skip
from shared.contracts import STRICT_JSON
from shared.http import ProblemError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PARSER = EventParser.create(max_events=5, max_future_seconds=300)


def reference_decode(raw: bytes) -> Any:
    """The former decoding: pydantic-core's parser as the gate, then stdlib json with Decimals."""
    from_json(raw, allow_inf_nan=False)
    return json.loads(raw, parse_float=Decimal)


def typed(value: Any) -> Any:
    """`value` with every leaf's type and exact text: Decimal('0.10') is not Decimal('0.1')."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, repr(value))


def outcome(decode: Any, raw: bytes) -> Any:
    try:
        return typed(decode(raw))
    except ProblemError as exc:
        return ("error", str(exc.detail).removeprefix("Invalid JSON: "))
    except ValueError as exc:
        return ("error", str(exc))


NUMBER = st.from_regex(
    r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?", fullmatch=True
)
SCALAR = (
    NUMBER
    | st.sampled_from(["true", "false", "null", "NaN", "Infinity", '"\\ud800"', "01", "1."])
    | st.text(max_size=8).map(json.dumps)
    | st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False))
)
JSON_TEXT = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.dictionaries(st.text(max_size=5).map(json.dumps), inner, max_size=4).map(
            lambda kv: "{" + ",".join(f"{k}: {v}" for k, v in kv.items()) + "}"
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(JSON_TEXT)
def test_decoding_json_texts_matches_the_former_two_pass_decoding(text: str) -> None:
    raw = text.encode(errors="surrogatepass")
    assert outcome(decode_json, raw) == outcome(reference_decode, raw)


@settings(max_examples=300)
@given(st.binary(max_size=40) | JSON_TEXT.map(lambda t: t.encode(errors="surrogatepass")[:-1]))
def test_decoding_arbitrary_bytes_matches_the_former_two_pass_decoding(raw: bytes) -> None:
    assert outcome(decode_json, raw) == outcome(reference_decode, raw)


def event(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "support",
        "event_id": "e",
        "customer_id": "c",
        "occurred_at": "2026-03-01T11:00:00Z",
        "ticket_id": "t",
        "action": "opened",
    }
    return {**body, **fields}


FIELD_CHOICES = st.fixed_dictionaries(
    {},
    optional={
        "occurred_at": st.sampled_from(
            ["2026-03-01T12:04:59+00:00", "2026-03-01T12:05:01Z", "2026-03-01T11:00:00", 5]
        ),
        "nps": st.sampled_from([3, "3", 11, None, True, Decimal("3.0")]),
        "action": st.sampled_from(["opened", "closed"]),
        "attributes": st.sampled_from([{"a": Decimal("0.5")}, {"a": Decimal("1e999")}, []]),
        "typo": st.just(1),
    },
)


def reference_validate(data: object) -> Any:
    """The former validation: one pass with every check, the future one included."""
    context = {**STRICT_JSON, "not_after": NOW + PARSER.max_future}
    try:
        events = list(PARSER.batch.validate_python(data, context=context).events)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return [describe_error(e, batch=True).model_dump(exclude_none=True) for e in errors]
    try:
        return refuse_conflicting_ids(events)
    except ProblemError as exc:
        return exc.errors


@settings(max_examples=200)
@given(st.lists(FIELD_CHOICES.map(lambda fields: event(**fields)), min_size=1, max_size=6))
def test_the_fast_validation_path_accepts_and_reports_exactly_as_one_full_pass(
    items: list[dict[str, Any]],
) -> None:
    data = {"events": items}
    try:
        got: Any = PARSER.validate(data, now=NOW, batch=True)
    except ProblemError as exc:
        got = exc.errors
    assert got == reference_validate(data)


def test_a_future_event_is_reported_next_to_the_other_items_errors() -> None:
    items = [event(occurred_at="2026-03-01T13:00:00Z"), event(nps=11), event()]
    with pytest.raises(ProblemError) as caught:
        PARSER.validate({"events": items}, now=NOW, batch=True)
    assert [(e["index"], e["field"]) for e in caught.value.errors or []] == [
        (0, "events[0].occurred_at"),
        (1, "events[1].nps"),
    ]


def test_the_source_is_filled_before_validation_where_absent_or_null() -> None:
    data: Any = {"events": [event(), event(source=None), event(source="crm"), 5, {"junk": 1}]}
    PARSER.fill_source(data, "shop", batch=True)
    assert [item.get("source") if isinstance(item, dict) else item for item in data["events"]] == [
        "shop",
        "shop",
        "crm",
        5,
        "shop",
    ]
    single = event()
    PARSER.fill_source(single, "shop", batch=False)
    assert single["source"] == "shop"


def test_a_source_name_that_is_no_valid_source_is_still_stamped_after_validation() -> None:
    long_name = "s" * 300  # over the 256 characters of `source`: must not fail the sender's event
    data = event()
    PARSER.fill_source(data, long_name, batch=False)
    assert "source" not in data
    [validated] = with_source(PARSER.validate(data, now=NOW, batch=False), long_name)
    assert validated.source == long_name


def test_an_event_sent_without_source_validates_as_it_was_stamped_before() -> None:
    filled = event()
    PARSER.fill_source(filled, "shop", batch=False)
    [now_way] = PARSER.validate(filled, now=NOW, batch=False)
    [old_way] = with_source(PARSER.validate(event(), now=NOW, batch=False), "shop")
    assert now_way == old_way and now_way.model_dump_json() == old_way.model_dump_json()


def test_a_naive_or_late_time_is_still_refused_on_the_single_event_route() -> None:
    for stamp in ["2026-03-01T11:00:00", (NOW + timedelta(minutes=6)).isoformat()]:
        with pytest.raises(ProblemError) as caught:
            PARSER.validate(event(occurred_at=stamp), now=NOW, batch=False)
        assert (caught.value.errors or [])[0]["field"] == "occurred_at"
