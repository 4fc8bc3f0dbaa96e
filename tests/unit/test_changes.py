"""From classifications to class changes: first classification, moves, hysteresis, matrices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

from shared.contracts import Dimension
from shared.domain.changes import (
    UNCLASSIFIED,
    ClassChange,
    decide,
    is_downgrade,
    migration_matrix,
)
from shared.domain.rules import Classification, Rules, default_rules_path, parse_rules

NOW = datetime(2025, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
TIER, ACTIVITY, LIFECYCLE = Dimension


@cache
def rules(dwell_days: float | None = None) -> Rules:
    text = default_rules_path().read_text(encoding="utf-8")
    if dwell_days is not None:
        text = text.replace(
            "hysteresis: {}", f"hysteresis: {{value_tier: {{min_dwell_days: {dwell_days}}}}}"
        )
    return parse_rules(text, source="rules.yaml")


def classification(tier: str, activity: str = "active", stage: str = "new") -> Classification:
    return Classification(
        value_tier=tier,
        activity_level=activity,
        lifecycle_stage=stage,
        r_score=5,
        f_score=1,
        m_score=1,
        rules_version="v1",
        matched={TIER: f"rule-{tier}", ACTIVITY: f"rule-{activity}", LIFECYCLE: f"rule-{stage}"},
        read={TIER: {"m_score": 1}, ACTIVITY: {"days_since_last_activity": 0.5}, LIFECYCLE: {}},
    )


def test_a_first_classification_is_a_change_on_every_dimension() -> None:
    decision = decide(None, {}, classification("bronze"), rules(), now=NOW)
    assert decision.classes == {TIER: "bronze", ACTIVITY: "active", LIFECYCLE: "new"}
    assert decision.changes[0] == ClassChange(TIER, None, "bronze", "rule-bronze", {"m_score": 1})
    assert [c.dimension for c in decision.changes] == [TIER, ACTIVITY, LIFECYCLE]
    assert decision.class_since == {TIER: NOW, ACTIVITY: NOW, LIFECYCLE: NOW}
    assert decision.hold_until is None


def test_an_unchanged_classification_emits_nothing_and_keeps_class_since() -> None:
    previous = classification("silver").classes()
    since = {TIER: NOW - 9 * DAY, ACTIVITY: NOW - 3 * DAY, LIFECYCLE: NOW - DAY}
    decision = decide(previous, since, classification("silver"), rules(), now=NOW)
    assert decision.changes == []
    assert decision.class_since == since


def test_a_change_on_one_dimension_restarts_only_its_clock() -> None:
    since = {TIER: NOW - 9 * DAY, ACTIVITY: NOW - 3 * DAY, LIFECYCLE: NOW - DAY}
    current = classification("silver", activity="inactive")
    decision = decide(classification("silver").classes(), since, current, rules(), now=NOW)
    assert decision.changes == [
        ClassChange(
            ACTIVITY, "active", "inactive", "rule-inactive", {"days_since_last_activity": 0.5}
        )
    ]
    assert decision.class_since == {**since, ACTIVITY: NOW}


def test_a_downgrade_before_the_minimum_dwell_time_is_held() -> None:
    since = {TIER: NOW - 13 * DAY, ACTIVITY: NOW, LIFECYCLE: NOW}
    decision = decide(
        classification("gold").classes(), since, classification("silver"), rules(14), now=NOW
    )
    assert decision.changes == []
    assert decision.classes[TIER] == "gold"
    assert decision.class_since[TIER] == NOW - 13 * DAY
    assert decision.hold_until == NOW + DAY


def test_a_downgrade_after_exactly_the_minimum_dwell_time_goes_through() -> None:
    since = {TIER: NOW - 14 * DAY, ACTIVITY: NOW, LIFECYCLE: NOW}
    decision = decide(
        classification("gold").classes(), since, classification("bronze"), rules(14), now=NOW
    )
    assert [(c.from_, c.to) for c in decision.changes] == [("gold", "bronze")]
    assert decision.class_since[TIER] == NOW
    assert decision.hold_until is None


def test_an_upgrade_is_never_held() -> None:
    since = {TIER: NOW, ACTIVITY: NOW, LIFECYCLE: NOW}
    decision = decide(
        classification("bronze").classes(), since, classification("gold"), rules(14), now=NOW
    )
    assert [(c.from_, c.to) for c in decision.changes] == [("bronze", "gold")]


def test_hysteresis_applies_only_to_the_dimensions_it_names() -> None:
    since = {TIER: NOW, ACTIVITY: NOW, LIFECYCLE: NOW}
    current = classification("silver", activity="inactive")
    decision = decide(classification("gold").classes(), since, current, rules(14), now=NOW)
    assert [(c.dimension, c.to) for c in decision.changes] == [(ACTIVITY, "inactive")]


def test_a_class_the_rules_no_longer_know_is_replaced_at_once() -> None:
    previous = {TIER: "platinum", ACTIVITY: "active", LIFECYCLE: "new"}
    since = {TIER: NOW, ACTIVITY: NOW, LIFECYCLE: NOW}
    decision = decide(previous, since, classification("none"), rules(14), now=NOW)
    assert [(c.from_, c.to) for c in decision.changes] == [("platinum", "none")]


def test_downgrades_follow_the_declared_order_of_classes() -> None:
    assert is_downgrade(TIER, "gold", "silver", rules())
    assert is_downgrade(LIFECYCLE, "new", "at_risk", rules())
    assert not is_downgrade(LIFECYCLE, "at_risk", "reactivated", rules())
    assert not is_downgrade(TIER, None, "none", rules())


def test_the_migration_matrix_counts_moves_from_each_class_to_each_class() -> None:
    pairs = [
        ("gold", "gold"),
        ("gold", "silver"),
        ("gold", "silver"),
        (None, "bronze"),
        ("bronze", "gold"),
    ]
    assert migration_matrix(pairs) == {
        UNCLASSIFIED: {"bronze": 1},
        "bronze": {"gold": 1},
        "gold": {"gold": 1, "silver": 2},
    }
    assert migration_matrix([]) == {}
