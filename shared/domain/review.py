"""When may a customer's classification change with no new event? (the next review time)"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from shared.domain.conditions import leaves, thresholds
from shared.domain.features import (
    LOGIN_WINDOWS,
    PURCHASE_WINDOWS,
    TICKET_WINDOWS,
    age_days,
)
from shared.domain.population import CutPoints
from shared.domain.rules_model import Rules
from shared.domain.state import CustomerState

MICROSECOND = timedelta(microseconds=1)
# Thresholds further out than this cannot be reached before datetime.max anyway.
_MAX_DAYS = 2_000_000


def _age_anchors(state: CustomerState) -> dict[str, datetime | None]:
    """Features that grow with time: the instant each one is an age of."""
    last = state.latest_purchases[-1].occurred_at if state.latest_purchases else None
    return {
        "days_since_last_purchase": last,
        "days_since_first_purchase": state.first_purchase_at,
        "days_since_last_activity": state.last_activity_at,
        "days_since_last_login": state.last_login_at,
        "days_since_last_support": state.last_support_at,
        "tenure_days": state.first_seen_at,
    }


def _window_facts(state: CustomerState) -> dict[str, tuple[list[datetime], timedelta]]:
    """Windowed features: the event times they count and the window length."""
    purchases = [p.occurred_at for p in state.purchases]
    windows: dict[str, tuple[list[datetime], timedelta]] = {}
    for days in PURCHASE_WINDOWS:
        for name in (f"purchases_{days}d", f"spend_{days}d"):
            windows[name] = (purchases, timedelta(days=days))
    for days in LOGIN_WINDOWS:
        windows[f"logins_{days}d"] = (state.logins, timedelta(days=days))
    openings = [o.occurred_at for o in state.ticket_openings]
    for days in TICKET_WINDOWS:
        windows[f"tickets_{days}d"] = (openings, timedelta(days=days))
    return windows


def feature_thresholds(rules: Rules, cut_points: CutPoints | None) -> dict[str, set[float]]:
    """Every numeric value each feature is compared with, in conditions, bands and cut points."""
    found: dict[str, set[float]] = {}
    for dimension in (rules.value_tier, rules.activity_level, rules.lifecycle_stage):
        for rule in dimension.rules:
            for leaf in leaves(rule.when):
                if leaf.feature is not None:
                    found.setdefault(leaf.feature, set()).update(thresholds(leaf))
    scores = rules.scores
    specs = (scores.recency, scores.frequency, scores.monetary)
    cuts: tuple[tuple[float, ...], ...] = ((), (), ())
    if scores.mode == "population" and cut_points is not None:
        cuts = (cut_points.recency, cut_points.frequency, cut_points.monetary)
    for spec, spec_cuts in zip(specs, cuts, strict=True):
        found.setdefault(spec.feature, set()).update({b.value for b in spec.bands} | set(spec_cuts))
    return found


def next_review_at(
    state: CustomerState, rules: Rules, *, now: datetime, cut_points: CutPoints | None = None
) -> datetime | None:
    """The earliest instant after `now` at which a rule boundary may be crossed without events.

    A conservative superset: every age threshold crossing and every window exit of a
    feature the rules read; None when nothing can change any more.
    """
    wanted = feature_thresholds(rules, cut_points)
    candidates = list(_age_crossings(state, wanted)) + list(_window_exits(state, wanted))
    future = [at for at in candidates if at > now]
    return min(future, default=None)


def _age_crossings(state: CustomerState, wanted: dict[str, set[float]]) -> Iterator[datetime]:
    for feature, anchor in _age_anchors(state).items():
        if anchor is None or feature not in wanted:
            continue
        for days in wanted[feature]:
            if abs(days) <= _MAX_DAYS:
                yield from _crossings(anchor, days)


def _crossings(anchor: datetime, days: float) -> Iterator[datetime]:
    """The first instants at which age >= days and age > days (exactly as features compute)."""
    try:
        guess = anchor + timedelta(days=days)
        yield _first(anchor, guess, lambda age: age >= days)
        yield _first(anchor, guess, lambda age: age > days)
    except OverflowError:
        return


def _first(anchor: datetime, guess: datetime, holds: Callable[[float], bool]) -> datetime:
    """Smallest microsecond instant near `guess` where `holds(age)` (age grows with time)."""
    at = guess
    while holds(age_days(anchor, at - MICROSECOND)):
        at -= MICROSECOND
    while not holds(age_days(anchor, at)):
        at += MICROSECOND
    return at


def _window_exits(state: CustomerState, wanted: Iterable[str]) -> Iterator[datetime]:
    windows = _window_facts(state)
    for feature in wanted:
        if feature in windows:
            times, length = windows[feature]
            # "Within N d" is age <= N d: an event leaves the window one microsecond later.
            yield from (at + length + MICROSECOND for at in times)
