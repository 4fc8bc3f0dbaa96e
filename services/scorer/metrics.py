"""The scorer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from services.scorer.evaluation import ChangeRecord

# Event time to emission spans seconds (live) up to days (late or replayed events).
EMIT_LATENCY_BUCKETS = (0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400, 7 * 86400, 30 * 86400)


@dataclass(frozen=True)
class ScorerMetrics:
    """Every metric the scorer exports."""

    events: Counter
    batch_size: Histogram
    batch_duration: Histogram
    consumer_lag: Gauge
    transitions: Counter
    customers: Gauge
    sweep_duration: Histogram
    sweep_customers: Counter
    outbox_backlog: Gauge
    published: Counter
    emit_latency: Histogram
    fenced_batches: Counter
    loop_errors: Counter

    def count_transitions(self, changes: Iterable[ChangeRecord]) -> None:
        """Count decided changes by dimension, from, to and cause."""
        for c in changes:
            labels = (c.dimension.value, c.from_class or "none", c.to_class, c.cause.value)
            self.transitions.labels(*labels).inc()


def scorer_metrics(registry: CollectorRegistry) -> ScorerMetrics:
    """Create the scorer's metrics on `registry`."""
    p = "tierstream_scorer_"
    return ScorerMetrics(
        events=Counter(
            f"{p}events_total",
            "Events consumed, by type and outcome (processed, duplicate, dead_lettered).",
            ["type", "outcome"],
            registry=registry,
        ),
        batch_size=Histogram(
            f"{p}batch_size_events",
            "Records per consumed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        ),
        batch_duration=Histogram(
            f"{p}batch_duration_seconds",
            "Time to apply one batch (decode, transaction, commit).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        consumer_lag=Gauge(
            f"{p}consumer_lag_records",
            "Records behind the partition end.",
            ["topic", "partition"],
            registry=registry,
        ),
        transitions=Counter(
            f"{p}transitions_total",
            "Class changes decided.",
            ["dimension", "from", "to", "cause"],
            registry=registry,
        ),
        customers=Gauge(
            f"{p}customers",
            "Customers per dimension and class.",
            ["dimension", "class"],
            registry=registry,
        ),
        sweep_duration=Histogram(
            f"{p}sweep_duration_seconds",
            "Duration of one sweep.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        sweep_customers=Counter(
            f"{p}sweep_customers_total",
            "Customers re-evaluated without a new event, by cause (time, rebucket, rule_change).",
            ["cause"],
            registry=registry,
        ),
        outbox_backlog=Gauge(
            f"{p}outbox_backlog_changes", "Tier changes not yet published.", registry=registry
        ),
        published=Counter(
            f"{p}published_changes_total", "Tier changes published (acked).", registry=registry
        ),
        emit_latency=Histogram(
            f"{p}emit_latency_seconds",
            "Event time of the trigger to the change being acknowledged by the broker.",
            buckets=EMIT_LATENCY_BUCKETS,
            registry=registry,
        ),
        fenced_batches=Counter(
            f"{p}fenced_batches_total",
            "Batches rolled back because another consumer owns the partition.",
            registry=registry,
        ),
        loop_errors=Counter(
            f"{p}loop_errors_total",
            "Failures of a background loop iteration (retried with back-off).",
            ["loop"],
            registry=registry,
        ),
    )
