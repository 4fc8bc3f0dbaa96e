"""The scorer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import prometheus_client as prom
from prometheus_client import CollectorRegistry, Gauge, Histogram

from services.scorer.evaluation import MAX_CATCH_UP_STEPS
from shared.contracts import EVENT_MODELS, ChangeCause
from shared.domain.changes import UNCLASSIFIED
from shared.fenced_consumer import (
    FETCH_AGE_HELP,
    GROUP_COMMIT_FAILURES_HELP,
    OFFSETS_REWOUND_HELP,
    OFFSETS_SKIPPED_HELP,
)
from shared.logging import get_logger
from shared.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from services.scorer.evaluation import ChangeRecord

log = get_logger(__name__)

EVENT_TYPES = tuple(EVENT_MODELS)
# Event time to emission spans seconds (live) up to days (late or replayed events).
EMIT_LATENCY_BUCKETS = (0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400, 7 * 86400, 30 * 86400)


@dataclass(frozen=True)
class ScorerMetrics:
    """Every metric the scorer exports."""

    events: prom.Counter
    batch_size: Histogram
    batch_duration: Histogram
    consumer_lag: Gauge
    fetch_age: Gauge
    group_commit_failures: prom.Counter
    transitions: prom.Counter
    customers: Gauge
    sweep_duration: Histogram
    sweep_customers: prom.Counter
    sweep_held_partitions: Gauge
    evaluation_failures: prom.Counter
    catch_up_cut_short: prom.Counter
    outbox_backlog: Gauge
    outbox_oldest_age: Gauge
    rules_superseded: Gauge
    published: prom.Counter
    trimmed_changes: prom.Counter
    emit_latency: Histogram
    fenced_batches: prom.Counter
    offsets_rewound: prom.Counter
    offsets_skipped: prom.Counter
    loop_errors: prom.Counter
    state_cache: prom.Counter

    def count_transitions(self, changes: Iterable[ChangeRecord]) -> None:
        """Count decided changes by dimension, from, to and cause."""
        counts = Counter(
            (c.dimension.value, c.from_class or UNCLASSIFIED, c.to_class, c.cause.value)
            for c in changes
            if c.from_class != c.to_class
        )
        for labels, n in counts.items():
            self.transitions.labels(*labels).inc(n)

    def count_cut_short(self, cause: ChangeCause, customers: int) -> None:
        """Count, and warn of, customers whose catch-up stopped at MAX_CATCH_UP_STEPS."""
        self.catch_up_cut_short.labels(cause.value).inc(customers)
        log.warning("catch-up cut short: the changes left are dated at the evaluation",
                    cause=cause.value, customers=customers, steps=MAX_CATCH_UP_STEPS)  # fmt: skip

    def start_at_zero(self, loops: Iterable[str]) -> None:
        """Create the known label combinations, so `increase()` sees their first count."""
        for event_type in EVENT_TYPES:
            for outcome in ("processed", "duplicate", "dead_lettered", "quarantined"):
                self.events.labels(event_type, outcome)
        for cause in ChangeCause:
            if cause is not ChangeCause.EVENT:
                self.sweep_customers.labels(cause.value)
                self.evaluation_failures.labels(cause.value)
            self.catch_up_cut_short.labels(cause.value)
        for loop in loops:
            self.loop_errors.labels(loop)
        for result in ("hit", "miss", "stale"):
            self.state_cache.labels(result)


def scorer_metrics(registry: CollectorRegistry) -> ScorerMetrics:
    """Create the scorer's metrics on `registry`."""
    p = "tierstream_scorer_"
    return ScorerMetrics(
        events=prom.Counter(
            f"{p}events_total",
            "Events consumed, by type and outcome (processed, duplicate, dead_lettered:"
            " unreadable or invalid, quarantined: valid but folding or classifying raised).",
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
        fetch_age=Gauge(
            f"{p}consumer_fetch_age_seconds",
            FETCH_AGE_HELP,
            ["topic", "partition"],
            registry=registry,
        ),
        group_commit_failures=prom.Counter(
            f"{p}group_commit_failures_total", GROUP_COMMIT_FAILURES_HELP, registry=registry
        ),
        transitions=prom.Counter(
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
        sweep_held_partitions=Gauge(
            f"{p}sweep_held_partitions",
            "Event topic partitions whose customers this process's last time sweep held back:"
            " their consumer, in whichever process, is more than SCORER_SWEEP_MAX_LAG records"
            " behind, or has not recorded its progress lately or since the last rebalance.",
            registry=registry,
        ),
        sweep_customers=prom.Counter(
            f"{p}sweep_customers_total",
            "Customers re-evaluated without a new event, by cause (time, rebucket, rule_change).",
            ["cause"],
            registry=registry,
        ),
        evaluation_failures=prom.Counter(
            f"{p}evaluation_failures_total",
            "Customers whose re-evaluation without a new event raised, by cause (time,"
            " rebucket, rule_change). Each is left as it was and its error logged; a time sweep"
            " tries it again after SCORER_SWEEP_RETRY_S, the other passes on their next run.",
            ["cause"],
            registry=registry,
        ),
        catch_up_cut_short=prom.Counter(
            f"{p}catch_up_cut_short_total",
            f"Customers whose catch-up of time-driven changes stopped after"
            f" {MAX_CATCH_UP_STEPS:,} review times, by what re-evaluated them (event: a new"
            " event, time, rebucket, rule_change). The changes left were dated when the"
            " customer was evaluated, not at the instant each threshold was passed.",
            ["cause"],
            registry=registry,
        ),
        outbox_backlog=Gauge(
            f"{p}outbox_backlog_changes", "Tier changes not yet published.", registry=registry
        ),
        rules_superseded=Gauge(
            f"{p}rules_superseded",
            "1 while another process of the group activated a newer rules file than this"
            " one's: this process still classifies its consumed events with its own rules,"
            " and customers may move between the two (restart it with the new file).",
            registry=registry,
        ),
        outbox_oldest_age=Gauge(
            f"{p}outbox_oldest_age_seconds",
            "Age (by the scorer's clock) of the oldest tier change not yet published; 0 when"
            " every change is out.",
            registry=registry,
        ),
        published=prom.Counter(
            f"{p}published_changes_total", "Tier changes published (acked).", registry=registry
        ),
        trimmed_changes=prom.Counter(
            f"{p}trimmed_changes_total",
            "Tier changes published without their customer attributes (and, if still too large,"
            " their features), because the record would have been over KAFKA_MAX_MESSAGE_BYTES"
            " (header tierstream_trimmed names what was left out).",
            registry=registry,
        ),
        emit_latency=Histogram(
            f"{p}emit_latency_seconds",
            "Event time of the trigger to the change being acknowledged by the broker.",
            buckets=EMIT_LATENCY_BUCKETS,
            registry=registry,
        ),
        fenced_batches=prom.Counter(
            f"{p}fenced_batches_total",
            "Batches rolled back because another consumer owns the partition.",
            registry=registry,
        ),
        offsets_rewound=prom.Counter(
            f"{p}offsets_rewound_total",
            OFFSETS_REWOUND_HELP,
            ["topic", "partition"],
            registry=registry,
        ),
        offsets_skipped=prom.Counter(
            f"{p}offsets_skipped_total",
            OFFSETS_SKIPPED_HELP,
            ["topic", "partition"],
            registry=registry,
        ),
        loop_errors=prom.Counter(
            f"{p}loop_errors_total",
            "Failures of a background loop iteration (retried with back-off).",
            ["loop"],
            registry=registry,
        ),
        state_cache=prom.Counter(
            f"{p}state_cache_total",
            "Stored customers a batch locked, by where their state came from: hit (memory),"
            " miss (read from Postgres), stale (held, but the row was written elsewhere).",
            ["result"],
            registry=registry,
        ),
    )
