"""The rules file format: validation errors, versions, conditions, DOMAIN.md's example rules."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import Dimension
from shared.domain.conditions import evaluate
from shared.domain.features import FEATURES, FeatureValue
from shared.domain.rules import (
    Rules,
    RulesError,
    classify,
    default_rules_path,
    load_rules,
    parse_rules,
)

DEFAULT = default_rules_path().read_text(encoding="utf-8")

# DOMAIN.md's four example rules, written in the rules format.
EXAMPLES = """
scores:
  recency:
    {feature: days_since_last_purchase, better: lower, bands: [{op: le, value: 30, score: 5}]}
  frequency: {feature: purchases_365d, better: higher, bands: [{op: ge, value: 1, score: 1}]}
  monetary: {feature: spend_365d, better: higher, bands: [{op: gt, value: 0, score: 1}]}
value_tier:
  classes: [high_value_active, high_value, other]
  rules:
    - name: purchased in the last 30 days and lifetime spend over 5,000
      when:
        all:
          - {feature: days_since_last_purchase, op: le, value: 30}
          - {feature: lifetime_spend, op: gt, value: 5000}
      then: high_value_active
    - name: annual spend over 500,000 with a ticket or usage in 3 months
      when:
        all:
          - {feature: spend_365d, op: gt, value: 500000}
          - any:
              - {feature: tickets_90d, op: ge, value: 1}
              - {feature: logins_90d, op: ge, value: 1}
      then: high_value
    - {name: other, when: always, then: other}
activity_level:
  classes: [any]
  rules: [{name: any, when: always, then: any}]
lifecycle_stage:
  classes: [churn_risk, new_potential, other]
  rules:
    - name: 30 days without login or NPS below 6
      when:
        any:
          - {feature: days_since_last_login, op: gt, value: 30}
          - {feature: latest_nps, op: lt, value: 6}
      then: churn_risk
    - name: first purchase of 50,000-100,000 in a focus industry
      when:
        all:
          - {feature: lifetime_orders, op: eq, value: 1}
          - {feature: last_order_value, between: [50000, 100000]}
          - {attribute: industry, in: [manufacturing, logistics]}
      then: new_potential
    - {name: other, when: always, then: other}
"""


def features(**values: FeatureValue) -> dict[str, FeatureValue]:
    return {name: None for name in FEATURES} | values


def classes_of(
    values: dict[str, FeatureValue], attributes: dict[str, Any] | None = None
) -> tuple[str, str]:
    result = classify(values, attributes or {}, parse_rules(EXAMPLES, source="examples.yaml"))
    return result.value_tier, result.lifecycle_stage


def test_the_shipped_rules_load_with_a_short_content_hash_version() -> None:
    rules = load_rules(default_rules_path())
    assert len(rules.version) == 12
    assert int(rules.version, 16) >= 0
    assert rules.source == str(default_rules_path())
    assert rules.dimension(Dimension.VALUE_TIER).classes == ["gold", "silver", "bronze", "none"]


def test_comments_and_layout_do_not_change_the_version_but_content_does() -> None:
    base = parse_rules(DEFAULT, source="a").version
    assert parse_rules("# a comment\n" + DEFAULT, source="b").version == base
    changed = DEFAULT.replace("{op: ge, value: 20, score: 5}", "{op: ge, value: 21, score: 5}")
    assert parse_rules(changed, source="a").version != base


def test_high_spend_with_recent_usage_is_high_value() -> None:
    assert classes_of(features(spend_365d=Decimal("500000.01"), logins_90d=1))[0] == "high_value"
    assert classes_of(features(spend_365d=Decimal("500000.01"), tickets_90d=2))[0] == "high_value"
    assert classes_of(features(spend_365d=Decimal(500000), logins_90d=1))[0] == "other"
    assert (
        classes_of(features(spend_365d=Decimal(900000), logins_90d=0, tickets_90d=0))[0] == "other"
    )


def test_recent_buyer_with_lifetime_spend_over_5000_is_high_value_active() -> None:
    recent = features(days_since_last_purchase=30.0, lifetime_spend=Decimal("5000.01"))
    assert classes_of(recent)[0] == "high_value_active"
    assert classes_of(recent | {"days_since_last_purchase": 30.5})[0] == "other"
    assert classes_of(recent | {"lifetime_spend": Decimal(5000)})[0] == "other"


def test_no_login_for_30_days_or_a_detractor_is_churn_risk() -> None:
    assert classes_of(features(days_since_last_login=30.01))[1] == "churn_risk"
    assert classes_of(features(days_since_last_login=2.0, latest_nps=5))[1] == "churn_risk"
    assert classes_of(features(days_since_last_login=30.0, latest_nps=6))[1] == "other"


@pytest.mark.parametrize(
    ("order_value", "orders", "industry", "stage"),
    [
        (Decimal(50000), 1, "manufacturing", "new_potential"),
        (Decimal(100000), 1, "logistics", "new_potential"),
        (Decimal("49999.99"), 1, "manufacturing", "other"),
        (Decimal("100000.01"), 1, "manufacturing", "other"),
        (Decimal(70000), 2, "manufacturing", "other"),
        (Decimal(70000), 1, "retail", "other"),
        (Decimal(70000), 1, None, "other"),
    ],
)
def test_first_purchase_in_range_from_a_focus_industry_is_new_potential(
    order_value: Decimal, orders: int, industry: str | None, stage: str
) -> None:
    values = features(last_order_value=order_value, lifetime_orders=orders)
    attributes = {} if industry is None else {"industry": industry}
    assert classes_of(values, attributes)[1] == stage


def test_a_comparison_with_a_missing_value_is_false_and_its_negation_true() -> None:
    text = DEFAULT.replace(
        "when: {feature: has_purchased, op: eq, value: true}",
        "when: {not: {feature: latest_nps, op: ge, value: 0}}",
    )
    rules = parse_rules(text, source="t")
    assert classify(features(), {}, rules).value_tier == "bronze"
    assert classify(features(latest_nps=4), {}, rules).value_tier == "none"


def test_decimal_amounts_compare_exactly_with_decimal_thresholds_in_yaml() -> None:
    text = DEFAULT.replace("{op: gt, value: 0, score: 1}", "{op: ge, value: 0.3, score: 1}")
    rules = parse_rules(text, source="t")
    assert classify(features(spend_365d=Decimal("0.3")), {}, rules).m_score == 1
    assert classify(features(spend_365d=Decimal("0.29")), {}, rules).m_score == 0


def test_an_attribute_of_the_wrong_type_makes_a_comparison_false_not_an_error() -> None:
    text = DEFAULT.replace(
        "when: {feature: has_purchased, op: eq, value: true}",
        "when: {attribute: size, op: ge, value: 100}",
    )
    rules = parse_rules(text, source="t")
    assert classify(features(), {"size": "large"}, rules).value_tier == "none"
    assert classify(features(), {"size": 250}, rules).value_tier == "bronze"
    assert classify(features(), {"size": 250}, rules).read[Dimension.VALUE_TIER] == {
        "attributes.size": 250
    }


HUGE = "1" + "0" * 400  # a YAML integer of 401 digits
M_SCORE_4 = "{feature: m_score, op: ge, value: 4}"


def _broken(old: str, new: str) -> str:
    assert old in DEFAULT
    return DEFAULT.replace(old, new, 1)


ERRORS = {
    "an unknown feature": (
        _broken("{feature: m_score, op: ge, value: 4}", "{feature: m_scor, op: ge, value: 4}"),
        "gold",
        "value_tier.rules.0.when.all.0.feature",
        "unknown feature 'm_scor'",
    ),
    "a bad operator": (
        _broken("{feature: has_purchased, op: eq,", "{feature: has_purchased, op: equals,"),
        "bronze",
        "value_tier.rules.2.when.op",
        "'lt', 'le'",
    ),
    "an unknown class in then": (
        _broken("then: semi_active", "then: semi"),
        "semi_active",
        "activity_level.rules.1.then",
        "unknown class 'semi'",
    ),
    "an empty dimension": (
        DEFAULT[: DEFAULT.index("activity_level:")]
        + "activity_level: {classes: [active], rules: []}\n"
        + DEFAULT[DEFAULT.index("lifecycle_stage:") :],
        None,
        "activity_level.rules",
        "at least 1 item",
    ),
    "a condition of no known kind": (
        _broken(
            "when: {feature: lifetime_orders, op: eq, value: 1}", "when: {feature: lifetime_orders}"
        ),
        "new",
        "lifecycle_stage.rules.3.when",
        "a condition needs exactly one of",
    ),
    "an ordering operator with a text value": (
        _broken(
            "{feature: lifetime_orders, op: eq, value: 1}",
            "{feature: lifetime_orders, op: lt, value: one}",
        ),
        "new",
        "lifecycle_stage.rules.3.when.value",
        "needs a number",
    ),
    "an unknown feature nested under not": (
        _broken(
            "{feature: latest_nps, op: lt, value: 6}",
            "{not: {feature: latest_npx, op: lt, value: 6}}",
        ),
        "at_risk",
        "lifecycle_stage.rules.1.when.any.2.not.feature",
        "unknown feature 'latest_npx'",
    ),
    "a last rule that is not always": (
        _broken(
            "    - name: lead\n      when: always",
            "    - name: lead\n      when: {feature: has_events, op: eq, value: false}",
        ),
        "lead",
        "lifecycle_stage.rules.5.when",
        "`when: always`",
    ),
    "a score reading a score": (
        _broken("feature: purchases_365d", "feature: f_score"),
        None,
        "scores.frequency.feature",
        "unknown feature 'f_score'",
    ),
    "an unknown top-level key": (
        DEFAULT + "\nvalue_teir: {}\n",
        None,
        "value_teir",
        "Extra inputs",
    ),
    "an unknown hysteresis dimension": (
        _broken("hysteresis: {}", "hysteresis: {tier: {min_dwell_days: 3}}"),
        None,
        "hysteresis.tier",
        "",
    ),
    "a rule without a name": (
        _broken("- name: bronze\n", "- when2: x\n"),
        "#3",
        "value_tier.rules.2",
        "",
    ),
    "a NaN score threshold": (
        _broken("{op: le, value: 30, score: 5}", "{op: le, value: .nan, score: 5}"),
        None,
        "scores.recency.bands.0.value",
        "finite number",
    ),
    "an infinite condition value": (
        _broken("{feature: m_score, op: ge, value: 4}", "{feature: m_score, op: ge, value: .inf}"),
        "gold",
        "value_tier.rules.0.when.all.0.value",
        "finite number",
    ),
    "a NaN bound of between": (
        _broken("{feature: m_score, op: ge, value: 4}", "{feature: m_score, between: [.nan, 5]}"),
        "gold",
        "value_tier.rules.0.when.all.0.between.0",
        "finite number",
    ),
    "an infinite member of in": (
        _broken("{feature: m_score, op: ge, value: 4}", "{feature: m_score, in: [1, .inf]}"),
        "gold",
        "value_tier.rules.0.when.all.0.in.1",
        "finite number",
    ),
    # Finite, but past a float's range: review times compare thresholds as floats, so every
    # evaluation raised OverflowError and the consumer dead-lettered every event.
    "a condition value past a float's range": (
        _broken(
            "{feature: m_score, op: ge, value: 4}", f"{{feature: m_score, op: ge, value: {HUGE}}}"
        ),
        "gold",
        "value_tier.rules.0.when.all.0.value",
        "float's range",
    ),
    "a bound of between past a float's range": (
        _broken(
            "{feature: m_score, op: ge, value: 4}", f"{{feature: m_score, between: [1, -{HUGE}]}}"
        ),
        "gold",
        "value_tier.rules.0.when.all.0.between.1",
        "float's range",
    ),
    "a member of in past a float's range": (
        _broken(M_SCORE_4, f"{{feature: m_score, in: [1, {HUGE}]}}"),
        "gold",
        "value_tier.rules.0.when.all.0.in.1",
        "float's range",
    ),
    "an infinite dwell": (
        _broken("hysteresis: {}", "hysteresis: {value_tier: {min_dwell_days: .inf}}"),
        None,
        "hysteresis.value_tier.min_dwell_days",
        "",
    ),
    "a dwell over ten years": (
        _broken("hysteresis: {}", "hysteresis: {value_tier: {min_dwell_days: 3651}}"),
        None,
        "hysteresis.value_tier.min_dwell_days",
        "less than or equal to 3650",
    ),
    "true or false compared with a number feature": (
        _broken(
            "{feature: has_purchased, op: eq, value: true}",
            "{feature: lifetime_orders, op: eq, value: true}",
        ),
        "bronze",
        "value_tier.rules.2.when",
        "feature 'lifetime_orders' is a number; True is not one",
    ),
    "a quoted number compared with a number feature": (
        _broken(M_SCORE_4, '{feature: m_score, op: eq, value: "4"}'),
        "gold",
        "value_tier.rules.0.when.all.0",
        "'4' is not one",
    ),
    "a number compared with a yes/no feature": (
        _broken(
            "{feature: has_purchased, op: eq, value: true}",
            "{feature: has_purchased, in: [1]}",
        ),
        "bronze",
        "value_tier.rules.2.when",
        "is true or false; 1 never equals it",
    ),
    "a yes/no feature between numbers": (
        _broken(
            "{feature: has_purchased, op: eq, value: true}",
            "{feature: has_purchased, between: [0, 1]}",
        ),
        "bronze",
        "value_tier.rules.2.when",
        "is true or false",
    ),
    "always before the last rule": (
        _broken(
            "    - name: silver\n      when:\n        any:",
            "    - name: early\n      when: always\n      then: bronze\n"
            "    - name: silver\n      when:\n        any:",
        ),
        "early",
        "value_tier.rules.1.when",
        "silver, bronze, none could never match",
    ),
    # RULES.md: no rule is left unreachable. Judged by the conditions' form only.
    "a condition that always holds before the last rule": (
        _broken(
            "when: {feature: has_purchased, op: eq, value: true}",
            "when: {any: [always, {feature: has_purchased, op: eq, value: true}]}",
        ),
        "bronze",
        "value_tier.rules.2.when",
        "a `when` that always holds before the last rule: none could never match",
    ),
    "all of always before the last rule": (
        _broken("when: {feature: has_purchased, op: eq, value: true}", "when: {all: [always]}"),
        "bronze",
        "value_tier.rules.2.when",
        "a `when` that always holds before the last rule",
    ),
    "not always": (
        _broken("when: {feature: has_purchased, op: eq, value: true}", "when: {not: always}"),
        "bronze",
        "value_tier.rules.2.when",
        "this `when` never holds",
    ),
    "all of something and not always": (
        _broken(
            "when: {feature: has_purchased, op: eq, value: true}",
            "when: {all: [{feature: has_purchased, op: eq, value: true}, {not: {any: [always]}}]}",
        ),
        "bronze",
        "value_tier.rules.2.when",
        "this `when` never holds",
    ),
    "a condition an earlier rule has": (
        _broken(
            "{feature: days_since_last_activity, op: le, value: 30}",
            "{feature: days_since_last_activity, op: le, value: 7}",
        ),
        "semi_active",
        "activity_level.rules.1.when",
        "the same `when` as rule 'active' before it: the rule could never match",
    ),
    "a class no rule gives": (
        _broken("[gold, silver, bronze, none]", "[gold, goldd, silver, bronze, none]"),
        None,
        "value_tier.classes.1",
        "no rule gives class 'goldd'",
    ),
    "a band an earlier band covers": (
        _broken(
            "      - {op: ge, value: 10, score: 4}\n",
            "      - {op: ge, value: 10, score: 4}\n      - {op: ge, value: 30, score: 5}\n",
        ),
        None,
        "scores.frequency",
        "bands.2 (ge 30) can never give its score",
    ),
    "a score read from a yes/no feature": (
        _broken("feature: purchases_365d", "feature: has_purchased"),
        None,
        "scores.frequency.feature",
        "unknown feature 'has_purchased'",
    ),
    "a class declared twice": (
        _broken("[gold, silver, bronze, none]", "[gold, gold, silver, bronze, none]"),
        None,
        "value_tier.classes",
        "listed twice",
    ),
    "a NUL character in a condition's value": (
        _broken(
            "when: {feature: has_purchased, op: eq, value: true}",
            'when: {attribute: plan, op: eq, value: "enter\\0prise"}',
        ),
        "bronze",
        "value_tier.rules",
        "NUL character",
    ),
    # A playbook naming `Gold` acted on one of them, and its author meant the other.
    "two classes differing only in case": (
        _broken("[gold, silver, bronze, none]", "[gold, Gold, silver, bronze, none]"),
        None,
        "value_tier.classes",
        "two classes differ only in case ('gold')",
    ),
    # Postgres text cannot hold NUL: accepted, every scorer batch then failed on writing.
    "a NUL character in a class": (
        _broken("[active, semi_active, inactive]", '["active\\0", semi_active, inactive]'),
        None,
        "activity_level.classes.0",
        "should match pattern '^[A-Za-z0-9_.-]+$'",
    ),
    "a NUL character in then": (
        _broken("then: semi_active", 'then: "semi_active\\0"'),
        "semi_active",
        "activity_level.rules.1.then",
        "should match pattern",
    ),
    # Playbooks could not name it (`to: high value`).
    "a class with a space": (
        _broken("[gold, silver, bronze, none]", '["high value", silver, bronze, none]'),
        None,
        "value_tier.classes.0",
        "should match pattern",
    ),
    # `rules diff` shows customers without a class yet under this marker.
    "a class named like the unclassified marker": (
        _broken("[gold, silver, bronze, none]", '[gold, silver, bronze, "(unclassified)"]'),
        None,
        "value_tier.classes.3",
        "should match pattern",
    ),
    "a NUL character in a rule name": (
        _broken("- name: bronze\n", '- name: "bronze\\0"\n'),
        "bronze\x00",
        "value_tier.rules.2.name",
        "NUL character",
    ),
    "a NUL character in an attribute key": (
        _broken(M_SCORE_4, '{attribute: "region\\0", op: eq, value: emea}'),
        "gold",
        "value_tier.rules.0.when.all.0.attribute",
        "must not contain a NUL character",
    ),
    # A missing value makes every comparison false: `eq null` could never hold.
    "eq null on a feature": (
        _broken(M_SCORE_4, "{feature: latest_nps, op: eq, value: null}"),
        "gold",
        "value_tier.rules.0.when.all.0",
        "`eq null` never holds: a comparison with a missing value is false; for no value,"
        " write `{not: {feature: latest_nps, op: ne, value: null}}`",
    ),
    "eq null on an attribute": (
        _broken(M_SCORE_4, "{attribute: region, op: eq, value: ~}"),
        "gold",
        "value_tier.rules.0.when.all.0",
        "write `{not: {attribute: region, op: ne, value: null}}`",
    ),
    "null in in": (
        _broken(M_SCORE_4, "{attribute: region, in: [emea, null]}"),
        "gold",
        "value_tier.rules.0.when.all.0",
        "null in `in` never matches",
    ),
    # Lax pydantic read true as 1 and '20' as 20: score bands, dwell and `between` are strict.
    "a band score of true": (
        _broken("{op: le, value: 30, score: 5}", "{op: le, value: 30, score: true}"),
        None,
        "scores.recency.bands.0.score",
        "Input should be a valid integer",
    ),
    "a band score of 5.0": (
        _broken("{op: le, value: 30, score: 5}", "{op: le, value: 30, score: 5.0}"),
        None,
        "scores.recency.bands.0.score",
        "Input should be a valid integer",
    ),
    "a band value of true": (
        _broken("{op: le, value: 30, score: 5}", "{op: le, value: true, score: 5}"),
        None,
        "scores.recency.bands.0.value",
        "Input should be a valid number",
    ),
    "a quoted band value": (
        _broken("{op: le, value: 30, score: 5}", "{op: le, value: '30', score: 5}"),
        None,
        "scores.recency.bands.0.value",
        "Input should be a valid number",
    ),
    "an otherwise of true": (
        _broken("    otherwise: 0\n", "    otherwise: true\n"),
        None,
        "scores.frequency.otherwise",
        "Input should be a valid integer",
    ),
    "a dwell of true": (
        _broken("hysteresis: {}", "hysteresis: {value_tier: {min_dwell_days: true}}"),
        None,
        "hysteresis.value_tier.min_dwell_days",
        "Input should be a valid number",
    ),
    "a quoted dwell": (
        _broken("hysteresis: {}", "hysteresis: {value_tier: {min_dwell_days: '14'}}"),
        None,
        "hysteresis.value_tier.min_dwell_days",
        "Input should be a valid number",
    ),
    "a bound of between of true": (
        _broken(M_SCORE_4, "{feature: m_score, between: [true, 5]}"),
        "gold",
        "value_tier.rules.0.when.all.0.between.0",
        "Input should be a number, not True",
    ),
    "quoted bounds of between": (
        _broken(M_SCORE_4, "{attribute: size, between: ['1', '5']}"),
        "gold",
        "value_tier.rules.0.when.all.0.between.0",
        "Input should be a number, not '1'",
    ),
    "an attribute key longer than ingest accepts": (
        _broken(M_SCORE_4, "{attribute: " + "r" * 65 + ", op: eq, value: emea}"),
        "gold",
        "value_tier.rules.0.when.all.0.attribute",
        "at most 64 characters",
    ),
}


@pytest.mark.parametrize(("text", "rule", "field", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_an_invalid_rules_file_is_refused_naming_file_rule_and_field(
    text: str, rule: str | None, field: str, message: str
) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="candidate.yaml")
    error = caught.value
    assert (error.source, error.rule) == ("candidate.yaml", rule)
    assert error.field.startswith(field)
    assert error.line is not None, error  # the line the field is on, in a long file
    assert str(error).startswith(f"candidate.yaml:{error.line}: ")
    assert message in str(error)
    assert field in str(error)
    if rule is not None:
        assert f"rule {rule!r}" in str(error)


def test_deeply_nested_conditions_validate_in_linear_time() -> None:
    """Each level used to dump its whole subtree to find its kind, four times the work per
    level: depth 20 took 7 s and 50 never ended, hanging `rules check` and the scorer's start.
    A hang detector, not a performance bound: linear validation takes milliseconds."""
    condition = "{feature: m_score, op: ge, value: 4}"
    for _ in range(40):
        condition = f"{{all: [{condition}]}}"
    text = _broken("{feature: m_score, op: ge, value: 4}", condition)
    parsed: list[Rules] = []
    # A daemon thread: before the fix, a failed test must not also keep the run from ending.
    worker = threading.Thread(
        target=lambda: parsed.append(parse_rules(text, source="deep.yaml")), daemon=True
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "validating 40 levels of nesting did not end in 60 s"
    assert parsed and parsed[0].version


@pytest.mark.parametrize(
    "text", ["a: [", "- just a list", ""], ids=["broken YAML", "a list", "empty"]
)
def test_a_file_that_is_not_a_yaml_mapping_is_refused(text: str) -> None:
    with pytest.raises(RulesError, match=r"^odd\.yaml: "):
        parse_rules(text, source="odd.yaml")


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"nope\.yaml"):
        load_rules(tmp_path / "nope.yaml")


def test_true_and_false_only_ever_equal_boolean_features() -> None:
    assert (
        classify(features(has_purchased=True), {}, load_rules(default_rules_path())).value_tier
        == "bronze"
    )


@pytest.mark.parametrize(
    ("attributes", "nps", "tier"),
    [({}, None, "bronze"), ({"region": "emea"}, None, "none"), ({}, 7, "none")],
)
def test_not_ne_null_holds_for_a_missing_value(
    attributes: dict[str, Any], nps: int | None, tier: str
) -> None:
    """The idiom the refusal of `eq null` points to, on a feature and on an attribute."""
    text = DEFAULT.replace(
        "when: {feature: has_purchased, op: eq, value: true}",
        "when: {all: [{not: {feature: latest_nps, op: ne, value: null}},"
        " {not: {attribute: region, op: ne, value: null}}]}",
    )
    rules = parse_rules(text, source="t")
    values = features(latest_nps=nps)
    assert classify(values, attributes, rules).value_tier == tier
    when = rules.dimension(Dimension.VALUE_TIER).rules[2].when
    assert evaluate(when, values, attributes) is (tier == "bronze")


def test_a_band_threshold_written_as_an_integer_keeps_the_version() -> None:
    """Strict floats still take integers, read as floats: the version does not change."""
    base = parse_rules(DEFAULT, source="a")
    written = DEFAULT.replace("{op: ge, value: 20, score: 5}", "{op: ge, value: 20.0, score: 5}")
    assert parse_rules(written, source="b").version == base.version
    assert base.scores.frequency.bands[0].value == 20.0


def test_a_hysteresis_section_with_every_entry_commented_out_is_no_hysteresis() -> None:
    emptied = DEFAULT.replace("hysteresis: {}", "hysteresis:\n  # value_tier: {min_dwell_days: 14}")
    assert emptied != DEFAULT
    rules = parse_rules(emptied, source="t")
    assert rules.hysteresis == {}
    assert rules.version == parse_rules(DEFAULT, source="t").version


def test_conditions_that_only_look_alike_are_not_refused_as_repeats() -> None:
    """True is not 1 in a rule (nor `any` of a never-holding part unreachable)."""
    text = DEFAULT.replace(
        "    - name: inactive\n",
        "    - {name: b2b, when: {attribute: b2b, op: eq, value: true}, then: semi_active}\n"
        "    - {name: b2b_one, when: {attribute: b2b, op: eq, value: 1}, then: semi_active}\n"
        "    - name: maybe\n"
        "      when: {any: [{not: always}, {attribute: b2b, op: eq, value: x}]}\n"
        "      then: semi_active\n"
        "    - name: inactive\n",
    )
    rules = parse_rules(text, source="t").dimension(Dimension.ACTIVITY_LEVEL).rules
    assert [rule.name for rule in rules][2:5] == ["b2b", "b2b_one", "maybe"]


def test_an_error_names_the_line_of_the_field_in_a_long_file() -> None:
    # A path such as value_tier.rules.0.then alone sent the author counting list items.
    text = DEFAULT.replace("then: gold", "then: platinum", 1)
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="rules.yaml")
    line = caught.value.line
    assert line is not None and "then: platinum" in text.splitlines()[line - 1], line
    assert str(caught.value).startswith(f"rules.yaml:{line}: rule ")
