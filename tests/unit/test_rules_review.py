"""next_review_at: the first instant at which time alone may change a classification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contracts import (
    CustomerLoggedIn,
    Dimension,
    PurchaseMade,
    SupportAction,
    SupportTicketUpdated,
)
from shared.domain.features import compute_features
from shared.domain.population import CutPoints
from shared.domain.review import feature_boundaries
from shared.domain.rules import (
    Rules,
    classify,
    default_rules_path,
    load_rules,
    next_review_at,
    parse_rules,
)
from shared.domain.state import CustomerState, attributes_of, fold, new_state

NOW = datetime(2025, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
DAY = timedelta(days=1)
TIER, ACTIVITY, LIFECYCLE = Dimension
Event = PurchaseMade | CustomerLoggedIn | SupportTicketUpdated

# Reads many time-dependent features, with every operator and odd thresholds.
WIDE = """
scores:
  mode: population
  recency:
    feature: days_since_last_purchase
    better: lower
    bands: [{op: lt, value: 12.5, score: 5}, {op: le, value: 100, score: 3}]
  frequency: {feature: purchases_90d, better: higher, bands: [{op: ge, value: 3, score: 4}]}
  monetary: {feature: spend_30d, better: higher, bands: [{op: gt, value: 50, score: 2}]}
value_tier:
  classes: [a, b, c, d, z]
  rules:
    - name: a
      when:
        all:
          - {feature: logins_7d, op: ge, value: 2}
          - {feature: tenure_days, op: lt, value: 45.5}
      then: a
    - {name: b, when: {feature: tickets_90d, op: eq, value: 1}, then: b}
    - {name: c, when: {feature: days_since_first_purchase, between: [10, 200.25]}, then: c}
    - name: d
      when:
        any:
          - {feature: purchases_30d, op: ge, value: 2}
          - {feature: spend_365d, op: gt, value: 100}
      then: d
    - {name: z, when: always, then: z}
activity_level:
  classes: [x, y, z]
  rules:
    - {name: x, when: {feature: days_since_last_support, in: [1, 2, 3.5]}, then: x}
    - {name: y, when: {not: {feature: days_since_last_login, op: ge, value: 0.5}}, then: y}
    - {name: z, when: always, then: z}
lifecycle_stage:
  classes: [p, q, z]
  rules:
    - {name: p, when: {feature: logins_30d, op: ne, value: 0}, then: p}
    - {name: q, when: {feature: days_since_last_activity, op: lt, value: 12.345}, then: q}
    - {name: z, when: always, then: z}
"""
CUTS = CutPoints(
    version="t", recency=(3.25, 40, 100, 300), frequency=(1, 2, 2, 4), monetary=(5, 10, 20, 40)
)


@cache
def default_rules() -> Rules:
    return load_rules(default_rules_path())


@cache
def wide_rules() -> Rules:
    return parse_rules(WIDE, source="wide.yaml")


def state_of(*events: Event) -> CustomerState:
    state = new_state("c")
    for index, event in enumerate(events):
        fold(state, event.model_copy(update={"event_id": f"e{index}"}), now=NOW)
    return state


def log_in(at: datetime) -> Event:
    return CustomerLoggedIn(event_id="?", customer_id="c", occurred_at=at, channel="web")


def buy(at: datetime, amount: str = "10") -> Event:
    return PurchaseMade(
        event_id="?",
        customer_id="c",
        occurred_at=at,
        order_id="o",
        amount=Decimal(amount),
        currency="EUR",
    )


def support(at: datetime) -> Event:
    return SupportTicketUpdated(
        event_id="?", customer_id="c", occurred_at=at, ticket_id="t", action=SupportAction.OPENED
    )


def snapshot(
    state: CustomerState, rules: Rules, at: datetime, cuts: CutPoints | None = None
) -> tuple[dict[Dimension, str], int, int, int]:
    result = classify(compute_features(state, now=at), attributes_of(state), rules, cut_points=cuts)
    return result.classes(), result.r_score, result.f_score, result.m_score


def test_a_silent_customer_is_due_the_microsecond_the_login_silence_passes_30_days() -> None:
    t = NOW - 10 * DAY
    state = state_of(log_in(t))
    assert next_review_at(state, default_rules(), now=NOW) == t + 30 * DAY + US
    assert snapshot(state, default_rules(), t + 30 * DAY)[0][LIFECYCLE] == "lead"
    assert snapshot(state, default_rules(), t + 30 * DAY + US)[0][LIFECYCLE] == "at_risk"


def test_an_active_customer_is_due_when_the_7_day_activity_window_passes() -> None:
    t = NOW - 2 * DAY
    assert next_review_at(state_of(support(t)), default_rules(), now=NOW) == t + 7 * DAY + US


def test_gold_is_reviewed_when_its_90_day_recency_lapses() -> None:
    t = NOW - 40 * DAY
    state = state_of(*[buy(t, "600") for _ in range(10)])
    now = t + 80 * DAY
    assert snapshot(state, default_rules(), now)[0][TIER] == "gold"
    assert next_review_at(state, default_rules(), now=now) == t + 90 * DAY + US
    assert snapshot(state, default_rules(), t + 90 * DAY + US)[0][TIER] == "silver"


def test_a_customer_without_events_never_needs_a_review() -> None:
    assert next_review_at(new_state("c"), default_rules(), now=NOW) is None


def test_a_customer_churned_long_ago_never_needs_a_review() -> None:
    state = state_of(buy(NOW - 2000 * DAY), log_in(NOW - 1500 * DAY))
    assert next_review_at(state, default_rules(), now=NOW) is None


def test_a_value_in_an_in_list_is_due_the_instant_it_is_reached() -> None:
    t = NOW - timedelta(days=1.2)
    state = state_of(support(t))
    due = next_review_at(state, wide_rules(), now=NOW, cut_points=CUTS)
    assert due == t + 2 * DAY
    assert snapshot(state, wide_rules(), due - US, CUTS)[0][ACTIVITY] == "y"
    assert snapshot(state, wide_rules(), due, CUTS)[0][ACTIVITY] == "x"


def test_population_cut_points_are_boundaries_too() -> None:
    t = NOW - DAY
    state = state_of(buy(t))
    without = next_review_at(state, wide_rules(), now=NOW)
    with_cuts = next_review_at(state, wide_rules(), now=NOW, cut_points=CUTS)
    assert without == t + 10 * DAY
    assert with_cuts == t + timedelta(days=3.25)


MICROS_PER_DAY = 86_400 * 10**6
# Uniform instants, plus instants just inside or outside the windows and thresholds.
_NEAR = [0, 3.5, 7, 10, 12.345, 30, 45.5, 90, 100, 200.25, 300, 365]
instants = st.one_of(
    st.integers(-500 * MICROS_PER_DAY, 2 * MICROS_PER_DAY),
    st.tuples(st.sampled_from(_NEAR), st.integers(-MICROS_PER_DAY, MICROS_PER_DAY)).map(
        lambda near: -int(near[0] * MICROS_PER_DAY) + near[1]
    ),
).map(lambda us: NOW + timedelta(microseconds=us))


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    makers = st.sampled_from([log_in, buy, support])
    return [draw(makers)(draw(instants)) for _ in range(draw(st.integers(0, 12)))]


@settings(max_examples=250, deadline=None)
@given(history=histories(), wide=st.booleans(), fractions=st.lists(st.floats(0, 1), max_size=4))
def test_nothing_changes_between_now_and_the_next_review(
    history: list[Event], wide: bool, fractions: list[float]
) -> None:
    rules, cuts = (wide_rules(), CUTS) if wide else (default_rules(), None)
    state = state_of(*history)
    due = next_review_at(state, rules, now=NOW, cut_points=cuts)
    expected = snapshot(state, rules, NOW, cuts)
    if due is None:
        for days in (1, 100, 400, 5000):
            assert snapshot(state, rules, NOW + days * DAY, cuts) == expected
        return
    assert due > NOW
    span = due - US - NOW
    for instant in [due - US, *(NOW + span * fraction for fraction in fractions)]:
        assert snapshot(state, rules, instant, cuts) == expected


def first_crossing(anchor: datetime, days: float, kind: str) -> datetime:
    """The first microsecond at which the age of `anchor` reaches (or passes) `days`."""
    at = anchor + timedelta(days=days)

    def holds(instant: datetime) -> bool:
        age = (instant - anchor) / DAY
        return age >= days if kind == "reach" else age > days

    while holds(at - US):
        at -= US
    while not holds(at):
        at += US
    return at


def brute_force_review(
    state: CustomerState, rules: Rules, now: datetime, cuts: CutPoints | None
) -> datetime | None:
    """Every crossing of every boundary and every window exit, one by one; the first after now."""
    wanted = feature_boundaries(rules, cuts)
    last = state.latest_purchases[-1].occurred_at if state.latest_purchases else None
    anchors = {"days_since_last_purchase": last, "days_since_first_purchase":
               state.first_purchase_at, "days_since_last_activity": state.last_activity_at,
               "days_since_last_login": state.last_login_at, "days_since_last_support":
               state.last_support_at, "tenure_days": state.first_seen_at}  # fmt: skip
    found = [
        first_crossing(anchor, days, kind)
        for feature, anchor in anchors.items()
        if anchor is not None
        for days, kind in wanted.get(feature, set())
    ]
    times = {"purchases": [p.occurred_at for p in state.purchases], "logins": state.logins,
             "tickets": [o.occurred_at for o in state.ticket_openings]}  # fmt: skip
    for feature in wanted:
        source, _, window = feature.rpartition("_")
        source = "purchases" if source == "spend" else source
        if source in times and window.endswith("d"):
            found += [at + timedelta(days=int(window[:-1])) + US for at in times[source]]
    return min((at for at in found if at > now), default=None)


@settings(max_examples=250, deadline=None)
@given(history=histories(), wide=st.booleans())
def test_the_next_review_is_exactly_the_first_crossing_found_one_by_one(
    history: list[Event], wide: bool
) -> None:
    rules, cuts = (wide_rules(), CUTS) if wide else (default_rules(), None)
    state = state_of(*history)
    assert next_review_at(state, rules, now=NOW, cut_points=cuts) == brute_force_review(
        state, rules, NOW, cuts
    )


def test_far_future_events_do_not_overflow_the_review() -> None:
    far = datetime(9999, 12, 31, 6, tzinfo=UTC)  # every default boundary lies past datetime.max
    state = state_of(buy(far), log_in(far), support(far))
    assert next_review_at(state, default_rules(), now=NOW) is None
    assert next_review_at(state, wide_rules(), now=NOW, cut_points=CUTS) == far + DAY / 2
