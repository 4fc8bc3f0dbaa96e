"""Pure helpers of the scorer: batch folding, re-evaluation, decoding, cursors."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from services.scorer.api import decode_cursor, encode_cursor
from services.scorer.dead_letters import decode
from services.scorer.evaluation import (
    CustomerFailed,
    CustomerRecord,
    Scoring,
    distinct_events,
    evaluate_all,
    fold_batch,
)
from shared.contracts import ChangeCause, CustomerLoggedIn, Dimension, PurchaseMade
from shared.domain.rules import default_rules_path, load_rules
from shared.domain.rules_model import DimensionRules
from shared.domain.state import Event, new_state
from shared.http import ProblemError
from shared.pg import row_count as _row_count

NOW = datetime.fromisoformat("2026-03-01T00:00:00+00:00")
SCORING = Scoring(load_rules(default_rules_path()))


def buy(event_id: str, customer_id: str, days_ago: float, amount: str = "100") -> PurchaseMade:
    return PurchaseMade(
        event_id=event_id,
        customer_id=customer_id,
        order_id=event_id,
        occurred_at=NOW - timedelta(days=days_ago),
        amount=Decimal(amount),
        currency="EUR",
    )


def blank(customer_id: str) -> CustomerRecord:
    return CustomerRecord(customer_id, new_state(customer_id), None, {})


def test_later_copies_of_an_event_id_in_one_batch_are_dropped() -> None:
    first, copy = buy("e1", "c1", 1), buy("e1", "c1", 5, amount="999")
    assert distinct_events([first, copy, buy("e2", "c1", 2)]) == [first, buy("e2", "c1", 2)]


def test_a_first_batch_classifies_every_dimension_with_cause_event_at_the_latest_event_time() -> (
    None
):
    outcome = fold_batch([blank("c1")], [buy("e1", "c1", 3), buy("e2", "c1", 1)], SCORING, now=NOW)
    [update] = outcome.updates
    assert update.classes == {Dimension.VALUE_TIER: "bronze", Dimension.ACTIVITY_LEVEL: "active",
                              Dimension.LIFECYCLE_STAGE: "established"}  # fmt: skip
    assert {(c.dimension, c.from_class, c.cause) for c in outcome.changes} == {
        (d, None, ChangeCause.EVENT) for d in Dimension
    }
    assert {c.occurred_at for c in outcome.changes} == {NOW - timedelta(days=1)}
    assert update.next_review_at is not None and update.next_review_at > NOW


def test_unchanged_classes_emit_nothing_and_time_changes_carry_cause_time() -> None:
    record = blank("c1")
    first = fold_batch([record], [buy("e1", "c1", 1)], SCORING, now=NOW)
    record.classes = first.updates[0].classes
    record.class_since = first.updates[0].class_since
    assert evaluate_all([record], SCORING, now=NOW, cause=ChangeCause.TIME).changes == []
    later = evaluate_all([record], SCORING, now=NOW + timedelta(days=10), cause=ChangeCause.TIME)
    [change] = later.changes
    assert (change.dimension, change.from_class, change.to_class) == (
        Dimension.ACTIVITY_LEVEL,
        "active",
        "semi_active",
    )
    assert change.cause is ChangeCause.TIME and change.occurred_at == NOW + timedelta(days=10)
    assert change.features == {"days_since_last_activity": 11.0}
    assert change.to_event().to_json()  # serialisable as the wire contract


def test_changes_carry_the_trace_of_their_trigger_read_only_for_customers_that_changed() -> None:
    changed, steady = blank("c1"), blank("c2")
    first = fold_batch([steady], [buy("e0", "c2", 2)], SCORING, now=NOW)
    steady.classes, steady.class_since = first.updates[0].classes, first.updates[0].class_since
    asked: list[str] = []

    def trace_of(event: Event) -> str:
        asked.append(event.event_id)
        return f"trace-{event.event_id}"

    login = CustomerLoggedIn(
        event_id="e3", customer_id="c2", occurred_at=NOW - timedelta(days=1), channel="web"
    )
    events: list[Event] = [buy("e1", "c1", 3), buy("e2", "c1", 1), login]
    outcome = fold_batch([changed, steady], events, SCORING, now=NOW, trace_of=trace_of)
    assert {(c.customer_id, c.traceparent) for c in outcome.changes} == {("c1", "trace-e2")}
    assert asked == ["e2"]  # the latest event of the one customer whose classes changed


def test_a_customer_the_domain_cannot_classify_is_named_in_the_error() -> None:
    broken = SCORING.rules.model_copy(
        update={"value_tier": DimensionRules.model_construct(classes=["x"], rules=[])}
    )
    with pytest.raises(CustomerFailed) as caught:
        fold_batch([blank("c1")], [buy("e1", "c1", 1)], Scoring(broken), now=NOW)
    assert caught.value.customer_id == "c1" and "no rule matched" in caught.value.error


def test_decode_separates_poison_from_events() -> None:
    good = CustomerLoggedIn(event_id="l1", customer_id="c1", occurred_at=NOW, channel="web")
    records = [
        SimpleNamespace(value=v)
        for v in (good.model_dump_json().encode(), b"{", None, b'{"type":"x"}')
    ]
    decoded, poison = decode(records)
    assert [event for event, _ in decoded] == [good]
    assert len(poison) == 3 and all(p.error for p in poison)


def test_cursors_round_trip_and_garbage_is_a_422() -> None:
    assert decode_cursor(encode_cursor("customer/ü 1")) == "customer/ü 1"
    with pytest.raises(ProblemError) as caught:
        decode_cursor("%%%")
    assert caught.value.status == 422


@pytest.mark.parametrize(("status", "rows"), [("UPDATE 3", 3), ("INSERT 0 2", 2), ("UPDATE 0", 0)])
def test_row_counts_come_from_the_command_tag(status: str, rows: int) -> None:
    assert _row_count(status) == rows
