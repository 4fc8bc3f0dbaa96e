"""From a new classification to the class changes to emit, with optional hysteresis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.contracts import Dimension
from shared.domain.features import FeatureValue
from shared.domain.rules import Classification
from shared.domain.rules_model import Rules

# Row/column name for "not classified before" in a migration matrix.
UNCLASSIFIED = "(unclassified)"


@dataclass(slots=True)  # not frozen, for speed: see Classification (shared/domain/rules.py)
class ClassChange:
    """One dimension moved from one class to another, and why."""

    dimension: Dimension
    from_: str | None
    to: str
    rule: str
    features: dict[str, FeatureValue]


@dataclass(slots=True)  # not frozen, for speed: see Classification (shared/domain/rules.py)
class Decision:
    """Effective classes after hysteresis, the changes to emit, and since when each class holds.

    `hold_until` is the earliest instant a downgrade held back by hysteresis may take
    effect (None when nothing is held): the caller should review the customer by then.
    """

    classes: dict[Dimension, str]
    changes: list[ClassChange]
    class_since: dict[Dimension, datetime]
    hold_until: datetime | None = field(default=None)


def decide(
    previous: Mapping[Dimension, str] | None,
    class_since: Mapping[Dimension, datetime],
    current: Classification,
    rules: Rules,
    *,
    now: datetime,
) -> Decision:
    """Compare the new classification with the previous classes, holding early downgrades."""
    classes: dict[Dimension, str] = {}
    changes: list[ClassChange] = []
    since: dict[Dimension, datetime] = {}
    holds: list[datetime] = []
    for dimension, target in current.classes().items():
        before = (previous or {}).get(dimension)
        if before == target:  # unchanged (the common case): nothing can be held either
            classes[dimension], since[dimension] = before, class_since.get(dimension, now)
            continue
        held = _held_until(dimension, before, target, class_since.get(dimension), rules)
        if before is not None and held is not None and held > now:
            # A downgrade held back until the minimum dwell time has passed.
            classes[dimension], since[dimension] = before, class_since.get(dimension, now)
            holds.append(held)
            continue
        classes[dimension], since[dimension] = target, now
        rule, read = current.matched[dimension], current.read[dimension]
        changes.append(ClassChange(dimension, before, target, rule, read))
    return Decision(classes, changes, since, min(holds) if holds else None)


def _held_until(
    dimension: Dimension, before: str | None, target: str, since: datetime | None, rules: Rules
) -> datetime | None:
    """Until when a downgrade from `before` to `target` is held (None: not held at all)."""
    setting = rules.hysteresis.get(dimension)
    if setting is None or since is None or not is_downgrade(dimension, before, target, rules):
        return None
    return since + timedelta(days=setting.min_dwell_days)


def is_downgrade(dimension: Dimension, before: str | None, after: str, rules: Rules) -> bool:
    """Whether `after` is a worse class than `before` in the rules' declared order."""
    order = rules.dimension(dimension)
    was = order.rank(before) if before is not None else None
    becomes = order.rank(after)
    return was is not None and becomes is not None and becomes > was


def migration_matrix(pairs: Iterable[tuple[str | None, str]]) -> dict[str, dict[str, int]]:
    """Counts of moves: from class -> to class -> customers (None as UNCLASSIFIED)."""
    counts = Counter((UNCLASSIFIED if before is None else before, after) for before, after in pairs)
    matrix: dict[str, dict[str, int]] = {}
    for (before, after), count in sorted(counts.items()):
        matrix.setdefault(before, {})[after] = count
    return matrix
