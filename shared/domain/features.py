"""The feature catalogue rules may reference, computed exactly from a customer's state."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any

from shared.contracts import TICKET_ENDED
from shared.domain.state import CustomerState, PurchaseFact, RatingStats

FeatureValue = int | float | Decimal | str | bool | None

DAY = timedelta(days=1)
PURCHASE_WINDOWS = (30, 90, 365)
LOGIN_WINDOWS = (7, 30, 90)
TICKET_WINDOWS = (90,)
_SIX_PLACES = Decimal("0.000001")

_REFUND_NOTE = "; refunds (refund_of set) are subtracted"

FEATURES: dict[str, str] = {
    "days_since_last_purchase": "Exact age in days of the latest purchase (refunds excluded).",
    "days_since_first_purchase": "Exact age in days of the first purchase.",
    "days_since_last_activity": "Exact age in days of the latest event of any kind.",
    "days_since_last_login": "Exact age in days of the latest login.",
    "days_since_last_support": "Exact age in days of the latest support ticket event.",
    **{
        f"purchases_{n}d": f"Purchases (not refunds) aged at most {n} days."
        for n in PURCHASE_WINDOWS
    },
    **{
        f"spend_{n}d": f"Spend of purchases aged at most {n} days, minus refunds (refund_of "
        f"set) aged at most {n} days: a refund counts at its own date, as in period accounting, "
        "even when it refunds an older order, so a window's spend can be negative."
        for n in PURCHASE_WINDOWS
    },
    "lifetime_orders": "Purchases ever (refunds are not orders).",
    "lifetime_spend": f"Spend ever{_REFUND_NOTE}.",
    "avg_order_value": "lifetime_spend / lifetime_orders (None before the first order).",
    "last_order_value": "Amount of the latest purchase.",
    "days_between_last_two_purchases": "Days from the second-latest to the latest purchase.",
    **{f"logins_{n}d": f"Logins aged at most {n} days." for n in LOGIN_WINDOWS},
    "lifetime_logins": "Logins ever.",
    "open_tickets": "Tickets whose latest action is neither `resolved` nor `closed`.",
    **{f"tickets_{n}d": f"Distinct tickets opened at most {n} days ago." for n in TICKET_WINDOWS},
    "latest_csat": "Latest CSAT rating (1-5).",
    "avg_csat": "Average CSAT rating.",
    "latest_nps": "Latest NPS rating (0-10).",
    "avg_nps": "Average NPS rating.",
    "tenure_days": "Exact age in days of the customer's first event.",
    "has_purchased": "At least one purchase ever.",
    "has_logged_in": "At least one login ever.",
    "has_events": "At least one event ever.",
    "r_score": "Recency score 1-5 (0 = never purchased), from the rules' `scores` section.",
    "f_score": "Frequency score 1-5 (0 = no purchase in the window).",
    "m_score": "Monetary score 1-5 (0 = no spend in the window).",
    "rfm_score": "r_score + f_score + m_score (0-15).",
}

# Features that the rules compute from the others (scores); not in compute_features output.
SCORE_FEATURES = ("r_score", "f_score", "m_score", "rfm_score")
# The features that are true or false; every other one is a number.
BOOLEAN_FEATURES = frozenset({"has_purchased", "has_logged_in", "has_events"})


# The windows as durations and their feature names, built once (constructing a timedelta
# or formatting a name per customer is costly on the hot path).
_PURCHASE_SPANS = tuple(
    (f"purchases_{days}d", f"spend_{days}d", timedelta(days=days)) for days in PURCHASE_WINDOWS
)
_LOGIN_SPANS = tuple((f"logins_{days}d", timedelta(days=days)) for days in LOGIN_WINDOWS)
_TICKET_SPANS = tuple((f"tickets_{days}d", timedelta(days=days)) for days in TICKET_WINDOWS)
_RATINGS = (("latest_csat", "avg_csat", "csat"), ("latest_nps", "avg_nps", "nps"))
_AT = attrgetter("occurred_at")
_RECENCY = (
    "days_since_last_purchase", "days_since_first_purchase", "days_since_last_activity",
    "days_since_last_login", "days_since_last_support", "tenure_days", "has_purchased",
    "has_logged_in", "has_events",
)  # fmt: skip
_LIFETIME = (
    "lifetime_orders", "lifetime_spend", "avg_order_value", "last_order_value",
    "days_between_last_two_purchases",
)  # fmt: skip


@dataclass(frozen=True)
class FeaturePlan:
    """Which parts of the catalogue to compute: whole groups, or single trailing windows."""

    recency: bool = True
    purchase_spans: tuple[tuple[str, str, timedelta], ...] = _PURCHASE_SPANS
    lifetime: bool = True
    login_spans: tuple[tuple[str, timedelta], ...] = _LOGIN_SPANS
    logins_ever: bool = True
    tickets: bool = True
    ratings: bool = True


_ALL = FeaturePlan()
_GROUPS = {
    "recency": frozenset(_RECENCY),
    "lifetime": frozenset(_LIFETIME),
    "tickets": frozenset(("open_tickets", *(key for key, _ in _TICKET_SPANS))),
    "ratings": frozenset(name for triple in _RATINGS for name in triple[:2]),
}


@functools.lru_cache(maxsize=16)
def feature_plan(names: frozenset[str]) -> FeaturePlan:
    """The least work that yields every feature in `names` (others may come along)."""
    return FeaturePlan(
        recency=bool(names & _GROUPS["recency"]),
        purchase_spans=tuple(s for s in _PURCHASE_SPANS if names & {s[0], s[1]}),
        lifetime=bool(names & _GROUPS["lifetime"]),
        login_spans=tuple(s for s in _LOGIN_SPANS if s[0] in names),
        logins_ever="lifetime_logins" in names,
        tickets=bool(names & _GROUPS["tickets"]),
        ratings=bool(names & _GROUPS["ratings"]),
    )


def compute_features(
    state: CustomerState, *, now: datetime, plan: FeaturePlan = _ALL
) -> dict[str, FeatureValue]:
    """The catalogue features (except scores) of one customer as of `now`.

    With a `plan` (`feature_plan(names)`), only what it names: the scorer computes the
    features its rules read (11 of the 30 with the default rules).
    """
    features = _recency(state, now) if plan.recency else {}
    if plan.purchase_spans:
        _purchase_windows(features, state.purchases, now, plan.purchase_spans)
    if plan.lifetime:
        _lifetime(features, state)
    if plan.login_spans or plan.logins_ever:
        _logins(features, state, now, plan.login_spans)
    if plan.tickets:
        _tickets(features, state, now)
    if plan.ratings:
        _ratings(features, state)
    return features


def _recency(state: CustomerState, now: datetime) -> dict[str, FeatureValue]:
    # An age is exact fractional days: `(now - at) / DAY` (timedelta division is correctly
    # rounded), written out here because a helper call per age cost more than the division.
    last = state.latest_purchases[-1].occurred_at if state.latest_purchases else None
    first, active = state.first_purchase_at, state.last_activity_at
    login, support, seen = state.last_login_at, state.last_support_at, state.first_seen_at
    return {
        "days_since_last_purchase": None if last is None else (now - last) / DAY,
        "days_since_first_purchase": None if first is None else (now - first) / DAY,
        "days_since_last_activity": None if active is None else (now - active) / DAY,
        "days_since_last_login": None if login is None else (now - login) / DAY,
        "days_since_last_support": None if support is None else (now - support) / DAY,
        "tenure_days": None if seen is None else (now - seen) / DAY,
        "has_purchased": state.lifetime_orders > 0,
        "has_logged_in": state.lifetime_logins > 0,
        "has_events": state.event_count > 0,
    }


def _purchase_windows(
    features: dict[str, FeatureValue],
    facts: list[PurchaseFact],
    now: datetime,
    spans: tuple[tuple[str, str, timedelta], ...],
) -> None:
    # Facts are sorted by time: a window is a tail of the list. Each window sums in list
    # order from Decimal(0), like sum() over the window.
    for purchases_key, spend_key, span in spans:
        count, spend = 0, Decimal(0)
        for fact in facts[_first_within(facts, now, span, _AT) :]:
            if fact.refund:
                spend += -fact.amount
            else:
                count += 1
                spend += fact.amount
        features[purchases_key] = count
        features[spend_key] = spend


def _first_within(
    times: list[Any], now: datetime, span: timedelta, key: Callable[[Any], datetime] | None
) -> int:
    """Index of the first fact aged at most `span` (an age is `now - at`; times sorted)."""
    try:
        return bisect.bisect_left(times, now - span, key=key)
    except OverflowError:  # `now - span` precedes datetime.min: every fact is within
        return 0


def _lifetime(features: dict[str, FeatureValue], state: CustomerState) -> None:
    orders, latest = state.lifetime_orders, state.latest_purchases
    average = (state.lifetime_spend / orders).quantize(_SIX_PLACES) if orders else None
    between = (latest[1].occurred_at - latest[0].occurred_at) / DAY if len(latest) == 2 else None
    features["lifetime_orders"] = orders
    features["lifetime_spend"] = state.lifetime_spend
    features["avg_order_value"] = average
    features["last_order_value"] = latest[-1].amount if latest else None
    features["days_between_last_two_purchases"] = between


def _logins(
    features: dict[str, FeatureValue],
    state: CustomerState,
    now: datetime,
    spans: tuple[tuple[str, timedelta], ...],
) -> None:
    logins = state.logins
    for key, span in spans:
        features[key] = len(logins) - _first_within(logins, now, span, None)
    features["lifetime_logins"] = state.lifetime_logins


def _tickets(features: dict[str, FeatureValue], state: CustomerState, now: datetime) -> None:
    features["open_tickets"] = sum(1 for t in state.tickets.values() if t.value not in TICKET_ENDED)
    for key, span in _TICKET_SPANS:
        openings = state.ticket_openings
        features[key] = len({o.ticket_id for o in openings if now - o.occurred_at <= span})


def _ratings(features: dict[str, FeatureValue], state: CustomerState) -> None:
    for latest_key, average_key, name in _RATINGS:
        stats: RatingStats = getattr(state, name)
        features[latest_key] = stats.latest.value if stats.latest else None
        features[average_key] = stats.total / stats.count if stats.count else None


def features_to_json(
    features: Mapping[str, FeatureValue],
) -> dict[str, int | float | str | bool | None]:
    """JSON-safe feature values (Decimals as JSON numbers)."""
    return {name: float(v) if isinstance(v, Decimal) else v for name, v in features.items()}
