"""When may a customer's classification change with no new event? (the next review time)"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from shared.domain.conditions import OP_BOUNDARIES, Boundary, boundaries, leaves
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


def feature_boundaries(rules: Rules, cut_points: CutPoints | None) -> dict[str, set[Boundary]]:
    """Every value each feature is compared with, in conditions, score bands and cut points."""
    found: dict[str, set[Boundary]] = {}
    for dimension in (rules.value_tier, rules.activity_level, rules.lifecycle_stage):
        for rule in dimension.rules:
            for leaf in leaves(rule.when):
                if leaf.feature is not None:
                    found.setdefault(leaf.feature, set()).update(boundaries(leaf))
    scores = rules.scores
    specs = (scores.recency, scores.frequency, scores.monetary)
    cuts: tuple[tuple[float, ...], ...] = ((), (), ())
    if scores.mode == "population" and cut_points is not None:
        cuts = (cut_points.recency, cut_points.frequency, cut_points.monetary)
    for spec, spec_cuts in zip(specs, cuts, strict=True):
        wanted = found.setdefault(spec.feature, set())
        wanted.update((band.value, kind) for band in spec.bands for kind in OP_BOUNDARIES[band.op])
        wanted.update((cut, kind) for cut in spec_cuts for kind in ("reach", "pass"))
    return found


def next_review_at(
    state: CustomerState, rules: Rules, *, now: datetime, cut_points: CutPoints | None = None
) -> datetime | None:
    """The earliest instant after `now` at which a rule boundary may be crossed without events.

    Exact for ages (the first microsecond at which an age threshold is reached or passed)
    and windows (the microsecond an event leaves a window), over the features the rules
    read; possibly early (a crossing need not change a class); None when nothing can change.
    """
    wanted = feature_boundaries(rules, cut_points)
    candidates = [*_age_crossings(state, wanted), *_window_exits(state, wanted)]
    return min((at for at in candidates if at > now), default=None)


def _age_crossings(state: CustomerState, wanted: dict[str, set[Boundary]]) -> Iterator[datetime]:
    for feature, anchor in _age_anchors(state).items():
        if anchor is None or feature not in wanted:
            continue
        for days, kind in wanted[feature]:
            crossing = _crossing(anchor, days, kind)
            if crossing is not None:
                yield crossing


def _crossing(anchor: datetime, days: float, kind: str) -> datetime | None:
    """The first microsecond at which the age of `anchor` reaches (or passes) `days`."""
    if abs(days) > _MAX_DAYS:
        return None
    try:
        guess = anchor + timedelta(days=days)
        if kind == "reach":
            return _first(anchor, guess, lambda age: age >= days)
        return _first(anchor, guess, lambda age: age > days)
    except OverflowError:
        return None


def _first(anchor: datetime, guess: datetime, holds: Callable[[float], bool]) -> datetime:
    """Smallest microsecond instant near `guess` where `holds(age)` (age grows with time)."""
    # timedelta(days=float) rounds; a few microsecond steps land exactly on the flip.
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
