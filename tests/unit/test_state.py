"""Customer state: exact folding of purchases, logins and tickets in event time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from shared.contracts import CustomerLoggedIn, PurchaseMade, SupportAction, SupportTicketUpdated
from shared.domain.features import compute_features
from shared.domain.state import (
    CustomerState,
    attributes_of,
    fold,
    new_state,
    prune,
    state_from_json,
    state_to_json,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def purchase(
    event_id: str,
    age: timedelta,
    amount: str = "10",
    refund_of: str | None = None,
    **attributes: str,
) -> PurchaseMade:
    return PurchaseMade(
        event_id=event_id,
        customer_id="c",
        occurred_at=NOW - age,
        order_id=f"o-{event_id}",
        amount=Decimal(amount),
        currency="EUR",
        refund_of=refund_of,
        attributes=attributes or None,
    )


def login(event_id: str, age: timedelta) -> CustomerLoggedIn:
    return CustomerLoggedIn(
        event_id=event_id, customer_id="c", occurred_at=NOW - age, channel="web"
    )


def ticket(
    event_id: str,
    age: timedelta,
    ticket_id: str,
    action: str,
    *,
    nps: int | None = None,
    csat: int | None = None,
) -> SupportTicketUpdated:
    return SupportTicketUpdated(
        event_id=event_id,
        customer_id="c",
        occurred_at=NOW - age,
        ticket_id=ticket_id,
        action=SupportAction(action),
        nps=nps,
        satisfaction=csat,
    )


def folded(
    *events: PurchaseMade | CustomerLoggedIn | SupportTicketUpdated, now: datetime = NOW
) -> CustomerState:
    state = new_state("c")
    for event in events:
        fold(state, event, now=now)
    return state


def test_refund_reduces_spend_but_is_neither_an_order_nor_a_recent_purchase() -> None:
    state = folded(purchase("p", 40 * DAY, "100"), purchase("r", 2 * DAY, "30", refund_of="o-p"))
    features = compute_features(state, now=NOW)
    assert features["lifetime_orders"] == 1
    assert features["lifetime_spend"] == Decimal("70")
    assert features["spend_30d"] == Decimal("-30")
    assert features["spend_90d"] == Decimal("70")
    assert features["purchases_30d"] == 0
    assert features["days_since_last_purchase"] == 40.0
    assert features["days_since_last_activity"] == 2.0


def test_late_event_older_than_every_window_still_counts_for_lifetime_values() -> None:
    state = folded(purchase("recent", 1 * DAY, "5"), purchase("ancient", 800 * DAY, "7"))
    features = compute_features(state, now=NOW)
    assert features["lifetime_orders"] == 2
    assert features["lifetime_spend"] == Decimal("12")
    assert features["purchases_365d"] == 1
    assert features["days_since_first_purchase"] == 800.0
    assert features["days_between_last_two_purchases"] == 799.0
    assert [p.event_id for p in state.purchases] == ["recent"]


def test_the_two_latest_purchases_are_kept_even_when_older_than_a_year() -> None:
    state = folded(purchase("a", 900 * DAY), purchase("b", 500 * DAY), purchase("c", 700 * DAY))
    features = compute_features(state, now=NOW)
    assert features["days_since_last_purchase"] == 500.0
    assert features["days_between_last_two_purchases"] == 200.0
    assert features["last_order_value"] == Decimal("10")


def test_a_ticket_is_open_until_its_latest_action_by_event_time_is_resolved() -> None:
    resolved_later = folded(
        ticket("t2", 1 * DAY, "A", "resolved"), ticket("t1", 5 * DAY, "A", "opened")
    )
    reopened = folded(
        ticket("u1", 5 * DAY, "B", "opened"),
        ticket("u3", 1 * DAY, "B", "reopened"),
        ticket("u2", 3 * DAY, "B", "resolved"),
    )
    assert compute_features(resolved_later, now=NOW)["open_tickets"] == 0
    assert compute_features(reopened, now=NOW)["open_tickets"] == 1


def test_a_closed_ticket_is_ended_like_a_resolved_one_and_an_escalated_one_stays_open() -> None:
    # Help desks say `closed` (Zendesk, Freshdesk) as often as `resolved`: it was refused.
    state = folded(
        ticket("c1", 5 * DAY, "C", "opened"), ticket("c2", 4 * DAY, "C", "closed"),
        ticket("e1", 3 * DAY, "E", "opened"), ticket("e2", 2 * DAY, "E", "escalated"),
    )  # fmt: skip
    assert compute_features(state, now=NOW)["open_tickets"] == 1


def test_tickets_in_90_days_count_distinct_tickets_opened_at_most_90_days_ago() -> None:
    state = folded(
        ticket("a", 90 * DAY, "A", "opened"),
        ticket("b", 90 * DAY + timedelta(microseconds=1), "B", "opened"),
        ticket("c", 10 * DAY, "A", "opened"),
        ticket("d", 5 * DAY, "C", "replied"),
    )
    features = compute_features(state, now=NOW)
    assert features["tickets_90d"] == 1
    assert features["open_tickets"] == 3


def test_latest_nps_is_chosen_by_event_time_not_arrival_order() -> None:
    state = folded(
        ticket("new", 1 * DAY, "A", "resolved", nps=9, csat=5),
        ticket("old", 9 * DAY, "A", "opened", nps=3, csat=2),
    )
    features = compute_features(state, now=NOW)
    assert features["latest_nps"] == 9
    assert features["avg_nps"] == 6.0
    assert features["latest_csat"] == 5
    assert features["avg_csat"] == 3.5


def test_same_instant_ratings_are_ordered_by_event_id() -> None:
    a = ticket("e-a", DAY, "A", "opened", nps=2)
    b = ticket("e-b", DAY, "B", "opened", nps=8)
    assert compute_features(folded(b, a), now=NOW)["latest_nps"] == 8
    assert compute_features(folded(a, b), now=NOW)["latest_nps"] == 8


def test_attributes_merge_per_key_latest_by_event_time() -> None:
    state = folded(
        purchase("new", 1 * DAY, region="eu", industry="retail"),
        purchase("old", 9 * DAY, region="us", size="large"),
    )
    assert attributes_of(state) == {"industry": "retail", "region": "eu", "size": "large"}


def test_logins_count_in_trailing_windows_and_lifetime() -> None:
    ages = [0 * DAY, 7 * DAY, 7 * DAY + timedelta(microseconds=1), 30 * DAY, 90 * DAY, 91 * DAY]
    state = folded(*(login(f"l{i}", age) for i, age in enumerate(ages)))
    features = compute_features(state, now=NOW)
    assert (features["logins_7d"], features["logins_30d"], features["logins_90d"]) == (2, 4, 5)
    assert features["lifetime_logins"] == 6
    assert features["days_since_last_login"] == 0.0


def test_an_unknown_customer_has_no_values_rather_than_zero_ages() -> None:
    features = compute_features(new_state("c"), now=NOW)
    assert features["days_since_last_purchase"] is None
    assert features["days_since_last_activity"] is None
    assert features["avg_order_value"] is None
    assert features["latest_nps"] is None
    assert features["has_events"] is False
    assert features["spend_365d"] == Decimal(0)


def test_event_times_in_other_timezones_are_stored_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    event = login("l", DAY).model_copy(update={"occurred_at": (NOW - DAY).astimezone(plus_two)})
    state = folded(event)
    assert state.last_login_at == NOW - DAY
    assert state_to_json(state)["last_login_at"] == "2024-12-31T00:00:00Z"


def test_json_round_trip_keeps_decimals_exact() -> None:
    state = folded(
        purchase("p", DAY, "0.1"), purchase("q", DAY, "0.2"), ticket("t", DAY, "A", "opened", nps=4)
    )
    data = state_to_json(state)
    assert data["lifetime_spend"] == "0.3"
    assert state_from_json(data) == state


def test_prune_drops_facts_that_left_every_window() -> None:
    state = folded(
        purchase("p", 300 * DAY), login("l", 80 * DAY), ticket("t", 80 * DAY, "A", "opened")
    )
    later = NOW + 70 * DAY
    before = compute_features(state, now=later)
    assert len(state.purchases) == len(state.logins) == len(state.ticket_openings) == 1
    prune(state, now=later)
    assert state.purchases == state.logins == state.ticket_openings == []
    assert compute_features(state, now=later) == before
    assert before["lifetime_orders"] == before["lifetime_logins"] == 1
