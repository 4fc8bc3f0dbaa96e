"""The scorer computes only the features its rules read, and decides exactly as with all."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.compiled import compiled_rules, features_read
from shared.domain.features import FEATURES, SCORE_FEATURES, compute_features, feature_plan
from shared.domain.rules import classify, default_rules_path, load_rules, parse_rules
from shared.domain.state import attributes_of
from tests.support.histories import NOW, Event, folded, histories

CATALOGUE = sorted(set(FEATURES) - set(SCORE_FEATURES))
DEFAULT = load_rules(default_rules_path())


@settings(max_examples=200, deadline=None)
@given(
    history=histories(),
    names=st.frozensets(st.sampled_from(CATALOGUE), min_size=1),
    later_days=st.integers(0, 400),
)
def test_a_plan_yields_every_feature_it_names_with_the_full_value(
    history: list[Event], names: frozenset[str], later_days: int
) -> None:
    state, now = folded(history), NOW + timedelta(days=later_days)
    full = compute_features(state, now=now)
    planned = compute_features(state, now=now, plan=feature_plan(names))
    assert {name: planned[name] for name in names} == {name: full[name] for name in names}
    assert planned.items() <= full.items()  # whatever else comes along is right too


def test_the_default_plan_leaves_out_what_no_default_rule_reads() -> None:
    assert features_read(DEFAULT) == {
        "days_since_last_purchase", "days_since_last_activity", "days_since_last_login",
        "days_between_last_two_purchases", "has_purchased", "has_logged_in", "has_events",
        "lifetime_orders", "latest_nps", "purchases_365d", "spend_365d",
    }  # fmt: skip
    plan = compiled_rules(DEFAULT).features
    assert [key for key, _, _ in plan.purchase_spans] == ["purchases_365d"]
    assert not plan.login_spans and not plan.logins_ever and not plan.tickets


@settings(max_examples=200, deadline=None)
@given(history=histories(), later_days=st.integers(0, 400))
def test_classifying_from_the_planned_features_decides_as_from_all(
    history: list[Event], later_days: int
) -> None:
    state, now = folded(history), NOW + timedelta(days=later_days)
    attributes = attributes_of(state)
    planned = compute_features(state, now=now, plan=compiled_rules(DEFAULT).features)
    assert classify(planned, attributes, DEFAULT) == classify(
        compute_features(state, now=now), attributes, DEFAULT
    )


def test_rules_reading_other_windows_get_them() -> None:
    text = default_rules_path().read_text().replace(
        "{feature: latest_nps, op: lt, value: 6}", "{feature: tickets_90d, op: ge, value: 3}"
    ).replace("{feature: days_since_last_activity, op: le, value: 7}",
              "{feature: logins_7d, op: ge, value: 1}")  # fmt: skip
    rules = parse_rules(text, source="test")
    assert {"tickets_90d", "logins_7d"} <= features_read(rules)
    assert "latest_nps" not in features_read(rules)
    plan = compiled_rules(rules).features
    assert plan.tickets and [key for key, _ in plan.login_spans] == ["logins_7d"]
