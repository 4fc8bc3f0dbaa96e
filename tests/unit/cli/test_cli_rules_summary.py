"""`rules check` shows each rule as a readable expression."""

from __future__ import annotations

from rich.console import Console

from cli.rules_summary import describe, rules_table
from shared.domain.rules import default_rules_path, load_rules, parse_rules

CANDIDATE = """
scores:
  recency:
    {feature: days_since_last_purchase, better: lower, bands: [{op: le, value: 30, score: 5}]}
  frequency: {feature: purchases_365d, better: higher, bands: [{op: ge, value: 20, score: 5}]}
  monetary: {feature: spend_365d, better: higher, bands: [{op: ge, value: 10000, score: 5}]}
value_tier:
  classes: [high_value, other]
  rules:
    - name: high_value
      when:
        all:
          - {feature: spend_365d, op: gt, value: 500000}
          - any:
              - {feature: tickets_90d, op: gt, value: 0}
              - {feature: logins_90d, op: gt, value: 0}
          - not: {attribute: industry, in: [retail, media]}
          - {feature: avg_order_value, between: [50000, 100000]}
      then: high_value
    - {name: other, when: always, then: other}
activity_level:
  classes: [any]
  rules: [{name: any, when: always, then: any}]
lifecycle_stage:
  classes: [any]
  rules: [{name: any, when: always, then: any}]
"""


def test_conditions_read_as_expressions() -> None:
    rules = parse_rules(CANDIDATE, source="candidate.yaml")
    when = rules.value_tier.rules[0].when
    assert describe(when) == (
        "spend_365d > 500000 and (tickets_90d > 0 or logins_90d > 0)"
        " and not attributes.industry in {'retail', 'media'}"
        " and 50000 <= avg_order_value <= 100000"
    )
    assert describe(rules.value_tier.rules[1].when) == "always"


def test_the_default_rules_table_lists_every_rule_in_order() -> None:
    console = Console(width=200, record=True)
    console.print(rules_table(load_rules(default_rules_path())))
    text = console.export_text()
    for name in ("gold", "silver", "bronze", "semi_active", "at_risk", "reactivated", "lead"):
        assert f" {name} " in text
    assert text.index(" gold ") < text.index(" silver ") < text.index(" bronze ")
