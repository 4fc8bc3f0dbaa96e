"""The services' /metrics pass promtool, and alerts, dashboard and autoscaling query only
metrics and labels the services really export (issue 6 acceptance)."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.deploy.pipeline import SERVICES
from tests.integration.deploy.promql import (
    ALERTS,
    ROOT,
    alert_expressions,
    dashboard_expressions,
    declared_labels,
    exported_names,
    keda_expressions,
    unknown_references,
)

# Labels that would carry unbounded values: ids and free text never become labels.
FORBIDDEN_LABELS = {"customer_id", "event_id", "order_id", "ticket_id", "id", "email", "error"}


def _all_names(scraped: dict[str, str]) -> set[str]:
    return set().union(*(exported_names(text) for text in scraped.values()))


def _series(text: str, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_promtool_accepts_the_metrics_of(
    service: str, scraped: dict[str, str], promtool: str
) -> None:
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scraped[service], capture_output=True, text=True
    )
    assert result.returncode == 0, f"promtool rejects {service}'s /metrics:\n{result.stderr}"


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_are_named_per_service_with_bounded_labels(
    service: str, scraped: dict[str, str]
) -> None:
    for family in text_string_to_metric_families(scraped[service]):
        if family.name.startswith(("python_", "process_")):
            continue
        assert family.name.startswith(f"tierstream_{service}_"), family.name
        if family.type == "histogram" and ("duration" in family.name or "latency" in family.name):
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & sample.labels.keys(), (sample.name, sample.labels)


@pytest.mark.parametrize(("service", "topics"), [("scorer", 3), ("actions", 2)])
def test_consumer_lag_is_exported_for_every_topic_partition(
    service: str, topics: int, scraped: dict[str, str]
) -> None:
    series = _series(scraped[service], f"tierstream_{service}_consumer_lag_records")
    owned = {(s["topic"], s["partition"]) for s in series}
    assert len(owned) == topics * 3  # the test topics have 3 partitions, one consumer owns all


def test_business_gauges_and_transitions_are_exported(scraped: dict[str, str]) -> None:
    customers = _series(scraped["scorer"], "tierstream_scorer_customers")
    assert {s["dimension"] for s in customers} == {
        "value_tier",
        "activity_level",
        "lifecycle_stage",
    }
    assert {"class": "gold", "dimension": "value_tier"} in customers
    moves = _series(scraped["scorer"], "tierstream_scorer_transitions_total")
    assert {
        "dimension": "value_tier",
        "from": "(unclassified)",
        "to": "gold",
        "cause": "event",
    } in moves
    assert _series(scraped["actions"], "tierstream_actions_tasks_open") == [
        {"queue": "senior-sales"}
    ]
    assert _series(scraped["actions"], "tierstream_actions_tasks_overdue") == [
        {"queue": "senior-sales"}
    ]
    enrolments = _series(scraped["actions"], "tierstream_actions_enrolments")
    assert {"sequence": "vip_welcome", "status": "active"} in enrolments


def test_alert_rules_use_only_exported_metrics_and_labels(scraped: dict[str, str]) -> None:
    queries = list(alert_expressions())
    assert len(queries) >= 10
    assert unknown_references(queries, _all_names(scraped), declared_labels()) == []


def test_dashboard_queries_use_only_exported_metrics_and_labels(scraped: dict[str, str]) -> None:
    queries = list(dashboard_expressions())
    assert len(queries) >= 20
    assert unknown_references(queries, _all_names(scraped), declared_labels()) == []


def test_keda_prometheus_triggers_query_exported_lag(scraped: dict[str, str]) -> None:
    queries = dict(keda_expressions())
    assert set(queries) == {"tierstream-scorer", "tierstream-actions"}
    references = unknown_references(list(queries.items()), _all_names(scraped), declared_labels())
    assert references == []


def test_a_query_naming_an_unexported_metric_or_label_is_caught(scraped: dict[str, str]) -> None:
    lag = "tierstream_.*_consumer_lag_records"
    bad = [
        ("typo", 'sum by (queue) (tierstream_scorer_events_total{outcom="x"}) + nope_total'),
        ("pattern", 'max({__name__=~"tierstream_(scorer|actions)_consumer_lag_record"})'),
        ("pattern label", f'max({{__name__=~"{lag}", queue="a"}})'),
    ]
    found = unknown_references(bad, _all_names(scraped), declared_labels())
    assert found == [
        "typo: tierstream_scorer_events_total has no label ['outcom']",
        "typo: metric nope_total is not exported",
        "typo: tierstream_scorer_events_total has no label ['queue']",
        "pattern: no exported metric matches 'tierstream_(scorer|actions)_consumer_lag_record'",
        "pattern label: tierstream_actions_consumer_lag_records has no label ['queue']",
        "pattern label: tierstream_scorer_consumer_lag_records has no label ['queue']",
    ]


def test_promtool_accepts_the_alert_rules_and_their_unit_tests(promtool: str) -> None:
    for args in (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ROOT / "deploy/prometheus/alerts_test.yml")],
        ["check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
