"""The actions service's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.domain.playbooks import Playbooks
from shared.fenced_consumer import (
    FETCH_AGE_HELP,
    GROUP_COMMIT_FAILURES_HELP,
    OFFSETS_REWOUND_HELP,
    OFFSETS_SKIPPED_HELP,
)
from shared.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS

ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20)
# Seconds to a day: the scheduler's poll, retry back-off, then an outage's backlog.
LATENESS_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400)
RECORD_SOURCES = ("tier_changed", "purchases")
RECORD_OUTCOMES = ("processed", "duplicate", "stale", "dead_lettered")
# (kind, channel) pairs a delivery can have: task pushes only go to the CRM webhook.
DELIVERY_ROUTES = (
    ("alert", "webhook"), ("alert", "email"), ("alert", "log"), ("task", "webhook"),
    ("step", "webhook"), ("step", "email"), ("step", "log"),
)  # fmt: skip
DELIVERY_OUTCOMES = (
    "sent", "unconfirmed", "retry", "dead", "superseded", "unrecorded", "deferred",
)  # fmt: skip
STEP_OUTCOMES = ("sent", "cancelled", "failed")
PRUNED_TABLES = ("inbox", "goal_event")
FALLBACK_REASONS = ("not_configured", "no_recipient")
REFUSALS = ("reentry_never", "reentry_cooldown", "goal_reached", "already_active")


@dataclass(frozen=True)
class ActionsMetrics:
    """Every metric the actions service exports."""

    records: Counter
    planned: Counter
    template_failures: Counter
    deliveries: Counter
    delivery_duration: Histogram
    delivery_attempts: Histogram
    delivery_lateness: Histogram
    dead_letters: Counter
    log_fallbacks: Counter
    dlq_records: Counter
    steps: Counter
    enrolments_started: Counter
    enrolments_refused: Counter
    tasks_open: Gauge
    tasks_overdue: Gauge
    enrolments: Gauge
    tasks_done_late: Gauge
    enrolment_exits: Gauge
    batch_size: Histogram
    batch_duration: Histogram
    consumer_lag: Gauge
    fetch_age: Gauge
    group_commit_failures: Counter
    steps_held_partitions: Gauge
    fenced_batches: Counter
    offsets_rewound: Counter
    offsets_skipped: Counter
    loop_errors: Counter
    dispatch_rounds: Counter
    pruned_rows: Counter


def _counter(name: str, doc: str, labels: list[str], registry: CollectorRegistry) -> Counter:
    return Counter(f"tierstream_actions_{name}", doc, labels, registry=registry)


def _gauge(name: str, doc: str, labels: list[str], registry: CollectorRegistry) -> Gauge:
    return Gauge(f"tierstream_actions_{name}", doc, labels, registry=registry)


def actions_metrics(registry: CollectorRegistry) -> ActionsMetrics:
    """Create the actions service's metrics on `registry`."""
    r = registry
    return ActionsMetrics(
        records=_counter(
            "records_total",
            "Consumed records by source (tier_changed, purchases) and outcome"
            " (processed, duplicate, dead_lettered).",
            ["source", "outcome"],
            r,
        ),
        planned=_counter(
            "actions_planned_total",
            "Actions planned from fresh tier changes, by kind and playbook.",
            ["kind", "playbook"],
            r,
        ),
        template_failures=_counter(
            "template_failures_total",
            "Actions of fresh tier changes whose templates failed on the change's data, by kind"
            " and playbook (the alert or enrolment was left out; a task got a fallback title).",
            ["kind", "playbook"],
            r,
        ),
        deliveries=_counter(
            "deliveries_total",
            "Send attempts by kind, channel and outcome (sent, retry, dead; unconfirmed: an e-mail"
            " the server took but never confirmed, recorded sent and not resent; superseded: an"
            " outcome that came after its lease ran out and the delivery was claimed again;"
            " unrecorded:"
            " the outcome could not be written, so the lease sends it again with the same key;"
            " deferred: a step claimed inside its quiet hours, put back until they end).",
            ["kind", "channel", "outcome"],
            r,
        ),
        delivery_duration=Histogram(
            "tierstream_actions_delivery_duration_seconds",
            "Time one send attempt took.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        delivery_attempts=Histogram(
            "tierstream_actions_delivery_attempts",
            "Attempts a delivery took until sent or dead.",
            ["kind"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        ),
        delivery_lateness=Histogram(
            "tierstream_actions_delivery_lateness_seconds",
            "From a delivery's due time to its recorded send, retries included (business time).",
            ["kind"],
            buckets=LATENESS_BUCKETS,
            registry=r,
        ),
        dead_letters=_counter(
            "dead_letters_total",
            "Deliveries given up (attempts exhausted or a permanent error).",
            ["kind", "channel"],
            r,
        ),
        log_fallbacks=_counter(
            "log_fallbacks_total",
            "Deliveries written to the log instead of the channel their playbook asked for"
            " (counted when logged): the channel is not configured (not_configured) or the"
            " message has no recipient, e.g. a customer without an e-mail (no_recipient).",
            ["kind", "channel", "reason"],
            r,
        ),
        dlq_records=_counter(
            "dlq_records_total", "Poison records written to the dead-letter topic.", ["topic"], r
        ),
        steps=_counter(
            "sequence_steps_total",
            "Sequence steps by outcome (sent, cancelled, failed).",
            ["sequence", "outcome"],
            r,
        ),
        enrolments_started=_counter(
            "enrolments_started_total", "Enrolments created, by sequence.", ["sequence"], r
        ),
        enrolments_refused=_counter(
            "enrolments_refused_total",
            "Enrolments a playbook asked for but not made, by sequence and reason: the"
            " re-entry policy (reentry_never, reentry_cooldown), the sequence's goal already"
            " reached since the change (goal_reached, e.g. bought again), or one of the"
            " sequence already active (already_active).",
            ["sequence", "reason"],
            r,
        ),
        tasks_open=_gauge("tasks_open", "Open tasks per queue.", ["queue"], r),
        tasks_overdue=_gauge(
            "tasks_overdue", "Open tasks past their due time, per queue.", ["queue"], r
        ),
        enrolments=_gauge(
            "enrolments", "Enrolments by sequence and status.", ["sequence", "status"], r
        ),
        tasks_done_late=_gauge(
            "tasks_done_late",
            "Tasks completed after their due time (the task SLA breached), per queue; it only"
            " grows, so its rise over a period is that period's.",
            ["queue"],
            r,
        ),
        enrolment_exits=_gauge(
            "enrolment_exits",
            "Enrolments that exited before their last step, by sequence and exit reason"
            " (goal:purchase, a dimension:class reached, sequence_removed); it only grows,"
            " so its rise over a period is that period's exits.",
            ["sequence", "reason"],
            r,
        ),
        batch_size=Histogram(
            "tierstream_actions_batch_size_records",
            "Records per consumed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        ),
        batch_duration=Histogram(
            "tierstream_actions_batch_duration_seconds",
            "Time to apply one consumed batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        consumer_lag=_gauge(
            "consumer_lag_records",
            "Records not yet applied, per topic and partition.",
            ["topic", "partition"],
            r,
        ),
        fetch_age=_gauge("consumer_fetch_age_seconds", FETCH_AGE_HELP, ["topic", "partition"], r),
        group_commit_failures=_counter(
            "group_commit_failures_total", GROUP_COMMIT_FAILURES_HELP, [], r
        ),
        steps_held_partitions=_gauge(
            "steps_held_partitions",
            "Partitions whose customers' due sequence steps the scheduler held back at its last"
            " claim: their consumer, in whichever process, is more than ACTIONS_STEP_MAX_LAG"
            " records behind, or has not recorded its progress lately or since the last"
            " rebalance.",
            [],
            r,
        ),
        fenced_batches=_counter(
            "fenced_batches_total", "Batches rolled back because another consumer moved on.", [], r
        ),
        offsets_rewound=_counter(
            "offsets_rewound_total", OFFSETS_REWOUND_HELP, ["topic", "partition"], r
        ),
        offsets_skipped=_counter(
            "offsets_skipped_total", OFFSETS_SKIPPED_HELP, ["topic", "partition"], r
        ),
        loop_errors=_counter(
            "loop_errors_total", "Failed iterations of a background loop.", ["loop"], r
        ),
        dispatch_rounds=_counter(
            "dispatch_rounds_total",
            "Claim rounds a sender (dispatcher: alerts and tasks; scheduler: sequence steps)"
            " completed; flat while it is stopped, failing or has every slot busy.",
            ["sender"],
            r,
        ),
        pruned_rows=_counter(
            "pruned_rows_total", "Rows deleted by the retention loop, by table.", ["table"], r
        ),
    )


def prime_metrics(
    m: ActionsMetrics, *, playbooks: Playbooks, dlq_topics: Iterable[str], loops: Iterable[str]
) -> None:
    """Create every known label combination at 0, so `increase()` also sees a first increment."""
    for source in RECORD_SOURCES:
        for outcome in RECORD_OUTCOMES:
            m.records.labels(source, outcome)
    for topic in dlq_topics:
        m.dlq_records.labels(topic)
    for kind, channel in DELIVERY_ROUTES:
        m.dead_letters.labels(kind, channel)
        for outcome in DELIVERY_OUTCOMES:
            m.deliveries.labels(kind, channel, outcome)
        if kind != "task" and channel != "log":
            for reason in FALLBACK_REASONS:
                m.log_fallbacks.labels(kind, channel, reason)
    for book in playbooks.playbooks:
        for kind in sorted({action.kind for action in book.actions}):
            m.planned.labels(kind, book.name)
            m.template_failures.labels(kind, book.name)
    for sequence in playbooks.sequences:
        m.enrolments_started.labels(sequence)
        for reason in REFUSALS:
            m.enrolments_refused.labels(sequence, reason)
        for outcome in STEP_OUTCOMES:
            m.steps.labels(sequence, outcome)
    for name in loops:
        m.loop_errors.labels(name)
    for table in PRUNED_TABLES:
        m.pruned_rows.labels(table)
