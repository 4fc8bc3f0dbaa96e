"""Scorer metrics: known series start at 0; a first classification is not a move from `none`."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest

from services.scorer.evaluation import ChangeRecord
from services.scorer.metrics import scorer_metrics
from shared.contracts import ChangeCause, Dimension

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def change(from_class: str | None, to_class: str) -> ChangeRecord:
    return ChangeRecord(
        "id", "c1", Dimension.VALUE_TIER, from_class, to_class, ChangeCause.EVENT, "rule", {}, {},
        "v1", NOW, NOW,
    )  # fmt: skip


def test_outcomes_dead_letters_and_loop_errors_exist_at_zero_before_anything_happens() -> None:
    registry = CollectorRegistry()
    scorer_metrics(registry).start_at_zero(["consumer", "relay"])
    text = generate_latest(registry).decode()
    for line in (
        'tierstream_scorer_events_total{outcome="dead_lettered",type="login"} 0.0',
        'tierstream_scorer_events_total{outcome="processed",type="purchase"} 0.0',
        'tierstream_scorer_events_total{outcome="duplicate",type="support"} 0.0',
        'tierstream_scorer_loop_errors_total{loop="relay"} 0.0',
        'tierstream_scorer_sweep_customers_total{cause="time"} 0.0',
    ):
        assert line in text


def test_a_first_classification_as_none_is_counted_from_unclassified_not_none_to_none() -> None:
    registry = CollectorRegistry()
    scorer_metrics(registry).count_transitions([change(None, "none"), change("gold", "gold")])
    text = generate_latest(registry).decode()
    assert 'from="(unclassified)"' in text and 'to="none"' in text
    assert 'from="none"' not in text and 'from="gold"' not in text
