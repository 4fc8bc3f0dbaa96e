"""When may a customer's classification change with no new event? (the next review time)"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any

from shared.domain.conditions import OP_BOUNDARIES, Boundary, boundaries, leaves
from shared.domain.features import DAY, LOGIN_WINDOWS, PURCHASE_WINDOWS, TICKET_WINDOWS
from shared.domain.population import CutPoints
from shared.domain.rules_model import Rules
from shared.domain.state import CustomerState

MICROSECOND = timedelta(microseconds=1)
# Thresholds further out than this cannot be reached before datetime.max anyway.
_MAX_DAYS = 2_000_000


def _last_purchase_at(state: CustomerState) -> datetime | None:
    return state.latest_purchases[-1].occurred_at if state.latest_purchases else None


# Features that grow with time: the instant each one is an age of.
_AGE_ANCHORS: dict[str, Callable[[CustomerState], datetime | None]] = {
    "days_since_last_purchase": _last_purchase_at,
    "days_since_first_purchase": attrgetter("first_purchase_at"),
    "days_since_last_activity": attrgetter("last_activity_at"),
    "days_since_last_login": attrgetter("last_login_at"),
    "days_since_last_support": attrgetter("last_support_at"),
    "tenure_days": attrgetter("first_seen_at"),
}


@dataclass(frozen=True)
class _Facts:
    """Where a windowed feature's event times are: a sorted list of the state, and a key."""

    attribute: str
    key: Callable[[Any], datetime] | None = None

    def of(self, state: CustomerState) -> list[Any]:
        facts: list[Any] = getattr(state, self.attribute)
        return facts


_PURCHASES = _Facts("purchases", attrgetter("occurred_at"))
_LOGINS = _Facts("logins")
_OPENINGS = _Facts("ticket_openings", attrgetter("occurred_at"))
# Windowed features: the event times they count and the window length.
_WINDOWS: dict[str, tuple[_Facts, timedelta]] = {
    **{f"purchases_{n}d": (_PURCHASES, timedelta(days=n)) for n in PURCHASE_WINDOWS},
    **{f"spend_{n}d": (_PURCHASES, timedelta(days=n)) for n in PURCHASE_WINDOWS},
    **{f"logins_{n}d": (_LOGINS, timedelta(days=n)) for n in LOGIN_WINDOWS},
    **{f"tickets_{n}d": (_OPENINGS, timedelta(days=n)) for n in TICKET_WINDOWS},
}


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


@dataclass(frozen=True)
class ReviewPlan:
    """What `next_review_at` checks, prepared once per rules and cut points.

    `ages`: per age feature the rules read, the instant it is an age of and the sorted
    offsets from that instant at which a boundary is crossed; `windows`: per distinct
    (facts, window length) the rules read, where the sorted event times come from.
    """

    ages: tuple[tuple[Callable[[CustomerState], datetime | None], tuple[timedelta, ...]], ...]
    windows: tuple[tuple[_Facts, timedelta], ...]


_plans: dict[tuple[int, CutPoints | None], tuple[Rules, ReviewPlan]] = {}
_PLANS_KEPT = 8


def review_plan(rules: Rules, cut_points: CutPoints | None) -> ReviewPlan:
    """The plan for these rules and cut points (computed once per pair, then reused)."""
    key = (id(rules), cut_points)
    hit = _plans.get(key)
    if hit is not None and hit[0] is rules:
        return hit[1]
    wanted = feature_boundaries(rules, cut_points)
    ages = tuple(
        (anchor, offsets)
        for feature, anchor in _AGE_ANCHORS.items()
        if feature in wanted and (offsets := _offsets(wanted[feature]))
    )
    windows = tuple(dict.fromkeys(_WINDOWS[f] for f in _WINDOWS if f in wanted))
    if len(_plans) >= _PLANS_KEPT:
        _plans.pop(next(iter(_plans)))
    _plans[key] = (rules, ReviewPlan(ages, windows))  # holding `rules` pins its id
    return _plans[key][1]


def next_review_at(
    state: CustomerState, rules: Rules, *, now: datetime, cut_points: CutPoints | None = None
) -> datetime | None:
    """The earliest instant after `now` at which a rule boundary may be crossed without events.

    Exact for ages (the first microsecond at which an age threshold is reached or passed)
    and windows (the microsecond an event leaves a window), over the features the rules
    read; possibly early (a crossing need not change a class); None when nothing can change.
    """
    plan = review_plan(rules, cut_points)
    earliest: datetime | None = None
    # Plain loops: generators and min() over them cost frames per customer on the hot path.
    for anchor, offsets in plan.ages:
        at = _next_crossing(anchor(state), offsets, now)
        if at is not None and (earliest is None or at < earliest):
            earliest = at
    for facts, length in plan.windows:
        at = _next_exit(facts.of(state), facts.key, length, now)
        if at is not None and (earliest is None or at < earliest):
            earliest = at
    return earliest


def _offsets(boundaries: Iterable[Boundary]) -> tuple[timedelta, ...]:
    found = (_offset(days, kind) for days, kind in boundaries)
    return tuple(sorted({offset for offset in found if offset is not None}))


def _offset(days: float, kind: str) -> timedelta | None:
    """The first microsecond age at which `days` is reached (or passed), as a duration.

    An age is `(at - anchor) / DAY`, a function of `at - anchor` alone, so the crossing
    of every anchor is that anchor plus this one offset.
    """
    if abs(days) > _MAX_DAYS:
        return None
    # timedelta(days=float) rounds; a few microsecond steps land exactly on the flip.
    offset = timedelta(days=days)
    holds: Callable[[float], bool] = (
        (lambda age: age >= days) if kind == "reach" else (lambda age: age > days)
    )
    while holds((offset - MICROSECOND) / DAY):
        offset -= MICROSECOND
    while not holds(offset / DAY):
        offset += MICROSECOND
    return offset


def _next_crossing(
    anchor: datetime | None, offsets: Sequence[timedelta], now: datetime
) -> datetime | None:
    """The first boundary crossing of this anchor's age after `now`."""
    if anchor is None:
        return None
    index = bisect.bisect_right(offsets, now - anchor)
    try:
        return anchor + offsets[index] if index < len(offsets) else None
    except OverflowError:  # beyond datetime.max (and so are the later offsets)
        return None


def _next_exit(
    facts: list[Any], key: Callable[[Any], datetime] | None, length: timedelta, now: datetime
) -> datetime | None:
    """When the first event still inside the window after `now` leaves it (facts sorted)."""
    # "Within N d" is age <= N d: an event leaves the window one microsecond later.
    try:
        index = bisect.bisect_right(facts, now - length - MICROSECOND, key=key)
    except OverflowError:  # `now` is so early that every event is still inside
        index = 0
    if index >= len(facts):
        return None
    at = key(facts[index]) if key is not None else facts[index]
    try:
        return at + length + MICROSECOND
    except OverflowError:  # a far-future event never leaves the window before datetime.max
        return None
