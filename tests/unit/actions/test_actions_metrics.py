"""Actions metrics: labelled counters start at 0 (so increase() sees a first event).

What each dispatcher outcome counts (sent, retry, dead, superseded, deferred, unrecorded) is
tested against real deliveries in tests/integration/actions/test_metrics_dispatch_outcomes.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.actions.metrics import actions_metrics, prime_metrics
from shared.domain.playbooks import default_playbooks_path, load_playbooks


def test_dead_letter_and_outcome_series_start_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = actions_metrics(registry)
    books = load_playbooks(default_playbooks_path())
    prime_metrics(metrics, playbooks=books, dlq_topics=["t.dlq"], loops=["consumer", "prune"])

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"tierstream_actions_{name}", labels)

    assert value("dead_letters_total", kind="step", channel="email") == 0
    assert value("dead_letters_total", kind="task", channel="webhook") == 0
    assert value("deliveries_total", kind="alert", channel="webhook", outcome="dead") == 0
    assert value("deliveries_total", kind="step", channel="email", outcome="unrecorded") == 0
    assert value("records_total", source="purchases", outcome="dead_lettered") == 0
    assert value("records_total", source="tier_changed", outcome="duplicate") == 0
    assert value("dlq_records_total", topic="t.dlq") == 0
    assert value("sequence_steps_total", sequence="win_back", outcome="failed") == 0
    assert value("actions_planned_total", kind="enrol", playbook="at_risk") == 0
    assert value("loop_errors_total", loop="prune") == 0
    assert value("pruned_rows_total", table="inbox") == 0
    # Only routes that exist: a task push never goes by e-mail.
    assert value("dead_letters_total", kind="task", channel="email") is None
