"""Pure helpers of the scorer: batch folding, re-evaluation, decoding, cursors."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from unittest.mock import patch

import pytest

from services.scorer.api import decode_cursor, encode_cursor
from services.scorer.dead_letters import decode
from services.scorer.evaluation import (
    ChangeRecord,
    CustomerFailed,
    CustomerRecord,
    Scoring,
    catch_up,
    catch_up_all,
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
from tests.support.domain_faults import failing_for

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


def blank_like(record: CustomerRecord) -> CustomerRecord:
    """A fresh record with the classes of `record` (catching up mutates the state)."""
    fresh = blank(record.customer_id)
    fold_batch([fresh], [buy("e1", record.customer_id, 1)], SCORING, now=NOW)
    fresh.classes, fresh.class_since = dict(record.classes or {}), dict(record.class_since)
    return fresh


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
    due = first.updates[0].next_review_at
    assert due == NOW + timedelta(days=6, microseconds=1)  # 7 days after the purchase
    later = catch_up_all([(record, due)], SCORING, now=NOW + timedelta(days=10))
    [change] = later.changes
    assert (change.dimension, change.from_class, change.to_class) == (
        Dimension.ACTIVITY_LEVEL,
        "active",
        "semi_active",
    )
    # Stamped when the threshold was passed, decided (emitted) when the sweep came.
    assert change.cause is ChangeCause.TIME and change.occurred_at == due
    assert change.emitted_at == NOW + timedelta(days=10)
    assert change.features["days_since_last_activity"] == pytest.approx(7.0)
    assert change.to_event().to_json()  # serialisable as the wire contract
    [update] = later.updates
    assert update.class_since[Dimension.ACTIVITY_LEVEL] == due
    assert update.next_review_at == NOW + timedelta(days=29, microseconds=1)  # inactive next


def test_a_late_catch_up_stops_crossing_boundaries_one_by_one_after_its_bound() -> None:
    record = blank("c1")
    first = fold_batch([record], [buy("e1", "c1", 1)], SCORING, now=NOW)
    record.classes = first.updates[0].classes
    record.class_since = first.updates[0].class_since
    due = first.updates[0].next_review_at
    assert due is not None
    late = NOW + timedelta(days=400)
    stepwise = catch_up(record, SCORING, due_at=due, now=late)[1]
    assert [(c.to_class, (c.occurred_at - NOW).days) for c in stepwise] == [
        ("semi_active", 6), ("inactive", 29), ("at_risk", 89), ("churned", 364),
    ]  # fmt: skip
    with patch("services.scorer.evaluation.MAX_CATCH_UP_STEPS", 1):
        bounded = catch_up(blank_like(record), SCORING, due_at=due, now=late)[1]
    assert [(c.to_class, c.occurred_at) for c in bounded] == [
        ("semi_active", due), ("inactive", late), ("churned", late),
    ]  # fmt: skip


def established(customer_id: str) -> CustomerRecord:
    """Bought 10 days before NOW and at NOW: established and active, reviewed on day 7."""
    record = blank(customer_id)
    events = [buy("e0", customer_id, 10), buy("e1", customer_id, 0)]
    [update] = fold_batch([record], events, SCORING, now=NOW).updates
    record.classes, record.class_since = dict(update.classes), dict(update.class_since)
    record.due_at = update.next_review_at
    return record


def moves(changes: list[ChangeRecord]) -> list[tuple[str, str | None, str, str, datetime]]:
    return [(c.dimension.value, c.from_class, c.to_class, c.cause.value, c.occurred_at)
            for c in changes]  # fmt: skip


def heavy_buyer(customer_id: str) -> CustomerRecord:
    """Sixty purchases over the last year, then one today: each old one leaving the 365-day
    window is a review time that changes no class."""
    record = blank(customer_id)
    events = [buy(f"e{i}", customer_id, 364 - i / 2, "10") for i in range(60)]
    [update] = fold_batch([record], [*events, buy("e60", customer_id, 0, "10")], SCORING,
                          now=NOW).updates  # fmt: skip
    record.classes, record.class_since = dict(update.classes), dict(update.class_since)
    record.due_at = update.next_review_at
    return record


def test_review_times_that_change_nothing_do_not_cut_a_long_catch_up_short() -> None:
    # A sweep 400 days late: the thirty-odd purchases leaving the window before day 90 once
    # used up the steps, and at_risk (which starts the at-risk playbook) was never emitted.
    late = NOW + timedelta(days=400)
    record = heavy_buyer("c1")
    assert record.due_at is not None
    caught = catch_up(record, SCORING, due_at=record.due_at, now=late)
    changes = caught[1]
    day = NOW + timedelta(microseconds=1)
    assert [(c.to_class, c.occurred_at) for c in changes
            if c.dimension is Dimension.LIFECYCLE_STAGE] == [
        ("established", day + timedelta(days=30)), ("at_risk", day + timedelta(days=90)),
        ("churned", day + timedelta(days=365)),
    ]  # fmt: skip
    assert all(c.occurred_at < late for c in changes)
    assert not caught[2]  # not cut short


def test_a_catch_up_cut_short_is_reported_by_every_pass_that_makes_one() -> None:
    late = NOW + timedelta(days=400)
    with patch("services.scorer.evaluation.MAX_CATCH_UP_STEPS", 3):
        swept = catch_up_all([(heavy_buyer("c1"), heavy_buyer("c1").due_at or NOW)], SCORING,
                             now=late)  # fmt: skip
        rules_pass = evaluate_all([heavy_buyer("c1")], SCORING, now=late,
                                  cause=ChangeCause.RULE_CHANGE)  # fmt: skip
        consumed = fold_batch([heavy_buyer("c1")], [buy("e99", "c1", -400)], SCORING, now=late)
        fits = catch_up_all([(established("c2"), NOW + timedelta(days=8))], SCORING,
                            now=NOW + timedelta(days=9))  # fmt: skip
    for outcome in (swept, rules_pass, consumed):
        assert outcome.cut_short == ["c1"]
        # The changes left are decided at once, dated when it was evaluated.
        assert max(c.occurred_at for c in outcome.changes) == late
    assert fits.cut_short == []


def test_a_customer_due_before_its_next_event_is_first_caught_up_to_that_event() -> None:
    # The sweep holds lagging partitions, so the consumer may reach a due customer first:
    # the changes due in between are those a sweep at the event's time would have made.
    later = NOW + timedelta(days=100)
    swept = established("c1")
    assert swept.due_at is not None
    by_sweep = catch_up(swept, SCORING, due_at=swept.due_at, now=later)[1]
    record = established("c1")
    read_at = later + timedelta(hours=1)
    outcome = fold_batch([record], [buy("e2", "c1", -100)], SCORING, now=read_at)
    day = NOW + timedelta(microseconds=1)  # the first instant past each threshold
    assert moves(outcome.changes) == [
        *moves(by_sweep),
        ("activity_level", "inactive", "active", "event", later),
        ("lifecycle_stage", "at_risk", "reactivated", "event", later),
    ]
    assert moves(by_sweep) == [
        ("activity_level", "active", "semi_active", "time", day + timedelta(days=7)),
        ("activity_level", "semi_active", "inactive", "time", day + timedelta(days=30)),
        ("lifecycle_stage", "established", "at_risk", "time", day + timedelta(days=90)),
    ]
    assert {c.emitted_at for c in outcome.changes} == {read_at}
    [update] = outcome.updates
    assert update.classes[Dimension.LIFECYCLE_STAGE] == "reactivated"
    assert update.next_review_at == later + timedelta(days=7, microseconds=1)


def test_an_event_from_before_the_review_time_is_folded_after_the_catch_up() -> None:
    # Read late, out of order: it happened 3 days before the customer's latest purchase, so
    # it says nothing about the days since. The sweep, had it reached the customer first,
    # would have caught it up to now; the consumer does the same, then counts the event.
    late = NOW + timedelta(days=100)
    swept = established("c1")
    assert swept.due_at is not None
    by_sweep = catch_up(swept, SCORING, due_at=swept.due_at, now=late)
    outcome = fold_batch([established("c1")], [buy("e2", "c1", 3)], SCORING, now=late)
    assert moves(outcome.changes)[: len(by_sweep[1])] == moves(by_sweep[1])
    assert {c.cause for c in by_sweep[1]} == {ChangeCause.TIME}
    # An event at the review time itself: nothing was due before it.
    at_due = buy("e3", "c1", 0).model_copy(update={"occurred_at": swept.due_at})
    outcome = fold_batch([established("c1")], [at_due], SCORING, now=late)
    assert {c.cause for c in outcome.changes} == {ChangeCause.EVENT}


def test_a_newer_event_from_before_the_review_time_cancels_the_catch_up() -> None:
    # A backlog read after an outage: bought on day 3 after NOW, before the review on day 7,
    # newer than anything folded. In order, it would have been folded before the review: the
    # customer never went semi_active, and nothing is emitted for the days it was read late.
    late = NOW + timedelta(days=5)
    outcome = fold_batch([established("c1")], [buy("e2", "c1", -3)], SCORING, now=late)
    assert outcome.changes == []
    [update] = outcome.updates
    assert update.next_review_at == NOW + timedelta(days=10, microseconds=1)


def test_a_rules_pass_first_catches_a_due_customer_up_with_cause_time() -> None:
    record = established("c1")
    outcome = evaluate_all([record], SCORING, now=NOW + timedelta(days=40),
                           cause=ChangeCause.RULE_CHANGE)  # fmt: skip
    day = NOW + timedelta(microseconds=1)
    assert moves(outcome.changes) == [
        ("activity_level", "active", "semi_active", "time", day + timedelta(days=7)),
        ("activity_level", "semi_active", "inactive", "time", day + timedelta(days=30)),
    ]
    assert outcome.updates[0].next_review_at == day + timedelta(days=90)


def test_a_customer_whose_re_evaluation_raises_is_set_aside_and_the_others_are_evaluated() -> None:
    later = NOW + timedelta(days=40)
    ids = ["a", "broken", "z"]
    due, rules_pass, rebucket_pass = ([established(c) for c in ids] for _ in range(3))
    with failing_for("broken"):
        swept = catch_up_all([(r, r.due_at or NOW) for r in due], SCORING, now=later)
        passes = [
            evaluate_all(records, SCORING, now=later, cause=cause)
            for records, cause in ((rules_pass, ChangeCause.RULE_CHANGE),
                                   (rebucket_pass, ChangeCause.REBUCKET))
        ]  # fmt: skip
    for outcome in (swept, *passes):
        assert outcome.failed == {"broken": "ValueError: a domain bug"}
        assert [u.customer_id for u in outcome.updates] == ["a", "z"]
        assert {c.customer_id for c in outcome.changes} == {"a", "z"}
        # The others exactly as without the failing customer.
        alone = evaluate_all([established("a")], SCORING, now=later, cause=ChangeCause.TIME)
        assert moves([c for c in outcome.changes if c.customer_id == "a"]) == moves(alone.changes)


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
