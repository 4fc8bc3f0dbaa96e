"""docs/RULES.md, the rule format's reference, keeps up with the code: every feature with
its meaning, and examples that load."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shared.domain.features import BOOLEAN_FEATURES, FEATURES
from shared.domain.rules_model import Rule

DOC = (Path(__file__).resolve().parents[2] / "docs/RULES.md").read_text()


def test_every_feature_is_listed_with_its_kind_and_meaning() -> None:
    for name, meaning in FEATURES.items():
        kind = "true / false" if name in BOOLEAN_FEATURES else r"(number|score)"
        row = rf"\| `{re.escape(name)}` \| {kind} \| {re.escape(meaning)} \|"
        assert re.search(row, DOC), name


def test_the_examples_are_rules_the_format_accepts() -> None:
    examples = DOC.split("## Examples", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    rules = [Rule.model_validate(item) for item in yaml.safe_load(examples)]
    assert [r.name for r in rules] == [
        "high_value", "churn_risk", "new_potential", "high_value_active",
    ]  # fmt: skip
