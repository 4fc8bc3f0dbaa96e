"""Population quintiles for R/F/M scores (the rules' `scores.mode: population`)."""

from __future__ import annotations

import bisect
import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CutPoints:
    """Quintile cut points (four ascending values each, empty when nobody qualifies)."""

    version: str
    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    # The R, F and M features they are quintiles of (None: stored before these were kept).
    features: tuple[str, str, str] | None = None

    def fit(self, features: tuple[str, str, str]) -> bool:
        """Whether these are quintiles of `features` (unknown: taken as yes)."""
        return self.features is None or self.features == features


def compute_cut_points(
    recency_days: Sequence[float],
    frequency: Sequence[float],
    monetary: Sequence[float],
    *,
    features: tuple[str, str, str] | None = None,
) -> CutPoints:
    """Quintile cut points of customers with purchases, versioned by a content hash (of the
    `features` they are quintiles of too, when given)."""
    # Customers with nothing in the window score 0 and must not drag the quintiles down.
    recency = _quintiles(recency_days)
    freq = _quintiles([v for v in frequency if v > 0])
    money = _quintiles([v for v in monetary if v > 0])
    content = json.dumps([recency, freq, money, *([list(features)] if features else [])])
    version = hashlib.sha256(content.encode()).hexdigest()[:12]
    return CutPoints(version=version, recency=recency, frequency=freq, monetary=money,
                     features=features)  # fmt: skip


def _quintiles(values: Sequence[float]) -> tuple[float, ...]:
    data = sorted(float(v) for v in values)
    if not data:
        return ()
    if len(data) == 1:
        return (data[0],) * 4
    return tuple(statistics.quantiles(data, n=5, method="inclusive"))


def quintile_score(value: float, cuts: Sequence[float], *, higher_is_better: bool) -> int:
    """Score 1-5 by quintile; like the threshold bands, a value equal to a cut scores higher."""
    if higher_is_better:
        return 1 + bisect.bisect_right(cuts, value)
    return 5 - bisect.bisect_left(cuts, value)
