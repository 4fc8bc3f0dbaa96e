"""deploy/prometheus/alerts.yml: every alert is labelled, explained and has a runbook section."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs/OPERATIONS.md"


def _alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    alerts = _alerts()
    assert len(alerts) >= 10
    for rule in alerts:
        labels, notes = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and isinstance(notes, dict)
        assert labels["severity"] in ("critical", "warning"), rule["alert"]
        assert notes["summary"] and notes["description"], rule["alert"]


def test_every_runbook_link_points_at_a_section_of_operations_md() -> None:
    headings = re.findall(r"^### (\S+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    anchors = {h.lower() for h in headings}
    for rule in _alerts():
        notes = rule["annotations"]
        assert isinstance(notes, dict)
        assert notes["runbook"] == f"docs/OPERATIONS.md#{str(rule['alert']).lower()}"
        assert str(rule["alert"]).lower() in anchors, f"no runbook section for {rule['alert']}"


def test_issue_6_alerts_are_all_there() -> None:
    names = {str(rule["alert"]) for rule in _alerts()}
    assert {
        "TierstreamScorerLagHighAndGrowing",
        "TierstreamActionsLagHighAndGrowing",
        "TierstreamScorerDeadLetters",
        "TierstreamActionsDeadLetters",
        "TierstreamIngestServerErrors",
        "TierstreamIngestUnavailable503",
        "TierstreamOutboxBacklog",
        "TierstreamTasksOverdue",
        "TierstreamServiceDown",
    } <= names


def test_every_alert_fires_in_a_unit_test_of_its_own() -> None:
    # promtool tests only the alerts a test names: three had none (the ingest broker, the
    # actions lag, failing loops), so a broken expression there would pass.
    tests = yaml.safe_load((ROOT / "deploy/prometheus/alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {str(rule["alert"]) for rule in _alerts()} - firing == set()
