"""Build deploy/grafana/dashboards/tierstream.json (the Tierstream Grafana dashboard).

Usage: `python deploy/grafana/build_dashboard.py` rewrites the JSON;
`--check` exits 1 when the committed JSON differs from what this script builds.
Panels are listed here, compactly, rather than hand-edited in 1,500 lines of JSON;
tests/integration/deploy checks that every query names a metric the services export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent / "dashboards" / "tierstream.json"
DATASOURCE = {"type": "prometheus", "uid": "tierstream-prometheus"}
RATE = "$__rate_interval"
Panel = dict[str, Any]


def query(expr: str, legend: str = "") -> dict[str, Any]:
    """One Prometheus query of a panel."""
    return {"expr": expr, "legendFormat": legend or "__auto", "datasource": DATASOURCE}


def timeseries(
    title: str, unit: str, *queries: dict[str, Any], stack: bool = False, desc: str = ""
) -> Panel:
    """A time-series panel (width and position are set by `layout`)."""
    custom: dict[str, Any] = {"fillOpacity": 30 if stack else 10, "lineWidth": 1}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}
        },
        "targets": [dict(q, refId=chr(ord("A") + i)) for i, q in enumerate(queries)],
    }


def stat(
    title: str,
    unit: str,
    expr: str,
    *,
    desc: str = "",
    red_above: float = 0,
    green_from: float | None = None,
) -> Panel:
    """A single-number panel that turns red above `red_above` (or, with `green_from`, that is
    red below it: Grafana colours a value by the last step at or below it)."""
    steps = [{"color": "green", "value": None}, {"color": "red", "value": red_above + 1e-9}]
    if green_from is not None:
        steps = [{"color": "red", "value": None}, {"color": "green", "value": green_from}]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
        "targets": [dict(query(expr), refId="A")],
    }


def p99(metric: str, by: str = "", q: float = 0.99) -> str:
    """A latency quantile over a histogram's buckets (`metric` may end in a selector)."""
    group = f"le, {by}" if by else "le"
    name, brace, selector = metric.partition("{")
    return (
        f"histogram_quantile({q}, sum by ({group}) (rate({name}_bucket{brace}{selector}[{RATE}])))"
    )


EVENTS_REQUESTS = 'tierstream_ingest_request_duration_seconds{route=~"/v1/events.*"}'


def ingest_panels() -> list[Panel]:
    """Ingest: rate and outcome, HTTP errors, latency, broker reachability."""
    return [
        timeseries(
            "Ingest events/s by type and outcome",
            "ops",
            query(
                f"sum by (type, outcome) (rate(tierstream_ingest_events_total[{RATE}]))",
                "{{type}} {{outcome}}",
            ),
            stack=True,
        ),
        timeseries(
            "Ingest HTTP errors/s by status",
            "reqps",
            query(
                "sum by (status) (rate(tierstream_ingest_request_duration_seconds_count"
                f'{{route=~"/v1/.*", status=~"[45].."}}[{RATE}]))',
                "{{status}}",
            ),
            desc="4xx: bad input or auth; 503: the broker did not ack in time (nothing accepted)."
            " API requests only: probes and scrapes are left out.",
        ),
        timeseries(
            "Ingest latency",
            "s",
            # The events routes only: probes and scrapes (a slow /readyz while the broker is
            # down) would skew the quantiles when traffic is low.
            query(p99(EVENTS_REQUESTS), "request p99"),
            query(p99(EVENTS_REQUESTS, q=0.5), "request p50"),
            query(p99("tierstream_ingest_publish_duration_seconds"), "publish to ack p99"),
        ),
        stat(
            "Broker reachable from every ingest",
            "bool",
            "min(tierstream_ingest_broker_available)",
            green_from=1,
        ),
    ]


def lag_panels() -> list[Panel]:
    """Consumer lag per topic and partition, and processing latency."""

    def lag(svc: str) -> Panel:
        expr = f"max by (topic, partition) (tierstream_{svc}_consumer_lag_records)"
        return timeseries(
            f"{svc.capitalize()} consumer lag (records)",
            "short",
            query(expr, "{{topic}} p{{partition}}"),
            stack=True,
            desc="Partition end minus the offset stored in Postgres.",
        )

    return [
        lag("scorer"),
        lag("actions"),
        timeseries(
            "Processing latency",
            "s",
            query(p99("tierstream_scorer_batch_duration_seconds"), "scorer batch p99"),
            query(p99("tierstream_actions_batch_duration_seconds"), "actions batch p99"),
            query(p99("tierstream_scorer_sweep_duration_seconds"), "sweep p99"),
            query(
                p99("tierstream_actions_delivery_duration_seconds", "channel"),
                "delivery p99 {{channel}}",
            ),
        ),
        timeseries(
            "Event time to tier change published (p50 / p99)",
            "s",
            query(p99("tierstream_scorer_emit_latency_seconds", q=0.5), "p50"),
            query(p99("tierstream_scorer_emit_latency_seconds"), "p99"),
            desc="Includes late and replayed events: a long tail is expected after a backfill.",
        ),
        timeseries(
            "Scorer events/s by outcome",
            "ops",
            query(
                f"sum by (type, outcome) (rate(tierstream_scorer_events_total[{RATE}]))",
                "{{type}} {{outcome}}",
            ),
            stack=True,
        ),
        stat(
            "Partitions held back from time sweeps",
            "short",
            "max(tierstream_scorer_sweep_held_partitions)",
            desc="Event partitions a consumer has not read up to: their customers wait for"
            " time-driven changes (0 in steady state; TierstreamScorerSweepsHeld after 30 min).",
        ),
        timeseries(
            "Outbox: waiting and published",
            "short",
            query("max(tierstream_scorer_outbox_backlog_changes)", "waiting"),
            query(f"sum(rate(tierstream_scorer_published_changes_total[{RATE}]))", "published/s"),
        ),
    ]


def business_panels() -> list[Panel]:
    """Tier distribution, transitions, actions, deliveries, tasks and sequences."""

    def distribution(dim: str, title: str) -> Panel:
        expr = f'max by (class) (tierstream_scorer_customers{{dimension="{dim}"}})'
        return timeseries(title, "short", query(expr, "{{class}}"), stack=True)

    return [
        distribution("value_tier", "Customers per value tier"),
        distribution("activity_level", "Customers per activity level"),
        distribution("lifecycle_stage", "Customers per lifecycle stage"),
        timeseries(
            "Transitions per hour (dimension: from -> to)",
            "short",
            query(
                "sum by (dimension, from, to) (increase(tierstream_scorer_transitions_total[1h]))",
                "{{dimension}}: {{from}} -> {{to}}",
            ),
            desc="The tier migration matrix over time; cause splits event, time and rebucket.",
        ),
        timeseries(
            "Churn and reactivation per hour",
            "short",
            query(
                'sum(increase(tierstream_scorer_transitions_total{dimension="lifecycle_stage",'
                ' to="churned"}[1h]))',
                "churned",
            ),
            query(
                'sum(increase(tierstream_scorer_transitions_total{dimension="lifecycle_stage",'
                ' to="reactivated"}[1h]))',
                "reactivated",
            ),
        ),
        timeseries(
            "Actions planned/s by kind",
            "ops",
            query(
                f"sum by (kind) (rate(tierstream_actions_actions_planned_total[{RATE}]))",
                "{{kind}}",
            ),
            stack=True,
        ),
        timeseries(
            "Deliveries/s by channel and outcome",
            "ops",
            query(
                f"sum by (channel, outcome) (rate(tierstream_actions_deliveries_total[{RATE}]))",
                "{{channel}} {{outcome}}",
            ),
        ),
        timeseries(
            "Tasks open and overdue per queue, and done late in the last day",
            "short",
            query("max by (queue) (tierstream_actions_tasks_open)", "open {{queue}}"),
            query("max by (queue) (tierstream_actions_tasks_overdue)", "overdue {{queue}}"),
            # A gauge that only grows: its rise over a day is the day's SLA breaches.
            query(
                "max by (queue) (delta(tierstream_actions_tasks_done_late[1d]))",
                "done late {{queue}} (1 d)",
            ),
        ),
        stat("Overdue tasks", "short", "sum(max by (queue) (tierstream_actions_tasks_overdue))"),
        timeseries(
            "Sequence enrolments by status",
            "short",
            query(
                "sum by (status) (max by (sequence, status) (tierstream_actions_enrolments))",
                "{{status}}",
            ),
            stack=True,
        ),
        timeseries(
            "Sequence exits per day by reason",
            "short",
            query(
                "sum by (sequence, reason) (max by (sequence, reason)"
                " (delta(tierstream_actions_enrolment_exits[1d])))",
                "{{sequence}} {{reason}}",
            ),
        ),
        timeseries(
            "Dead letters per hour",
            "short",
            query(
                "sum by (type) (increase(tierstream_scorer_events_total"
                '{outcome="dead_lettered"}[1h]))',
                "scorer {{type}}",
            ),
            query(
                "sum by (source) (increase(tierstream_actions_records_total"
                '{outcome="dead_lettered"}[1h]))',
                "actions {{source}}",
            ),
            query(
                "sum by (kind, channel) (increase(tierstream_actions_dead_letters_total[1h]))",
                "delivery given up {{kind}} {{channel}}",
            ),
            query(
                "sum by (kind, playbook)"
                " (increase(tierstream_actions_template_failures_total[1h]))",
                "template failed {{kind}} {{playbook}}",
            ),
        ),
        timeseries(
            "Background loop errors/s",
            "ops",
            query(
                f"sum by (loop) (rate(tierstream_scorer_loop_errors_total[{RATE}]))",
                "scorer {{loop}}",
            ),
            query(
                f"sum by (loop) (rate(tierstream_actions_loop_errors_total[{RATE}]))",
                "actions {{loop}}",
            ),
        ),
    ]


def fault_panels() -> list[Panel]:
    """What went wrong, each beside the alert that watches it (docs/OPERATIONS.md)."""

    def increase(metric: str, by: str, legend: str) -> dict[str, Any]:
        return query(f"sum by ({by}) (increase({metric}[{RATE}]))", legend)

    return [
        timeseries(
            "Broker contact: seconds since a fetch was answered",
            "s",
            query(
                "max by (service, instance) ({__name__=~"
                '"tierstream_(scorer|actions)_consumer_fetch_age_seconds"})',
                "{{service}} {{instance}}",
            ),
            desc="Grows while a consumer cannot reach the broker (TierstreamConsumerCutOff).",
        ),
        timeseries(
            "Oldest unpublished tier change",
            "s",
            query("max(tierstream_scorer_outbox_oldest_age_seconds)", "age"),
            desc="However few are pending (TierstreamOutboxStuck).",
        ),
        timeseries(
            "Set aside: dead letters, quarantined events, evaluation failures",
            "short",
            increase(
                'tierstream_scorer_events_total{outcome=~"dead_lettered|quarantined"}',
                "type, outcome",
                "scorer {{type}} {{outcome}}",
            ),
            increase(
                'tierstream_actions_records_total{outcome="dead_lettered"}',
                "source",
                "actions {{source}} dead_lettered",
            ),
            increase(
                "tierstream_scorer_evaluation_failures_total",
                "cause",
                "evaluation failed ({{cause}})",
            ),
            increase(
                "tierstream_scorer_catch_up_cut_short_total",
                "cause",
                "catch-up cut short ({{cause}})",
            ),
        ),
        timeseries(
            "Deliveries given up or logged instead",
            "short",
            increase(
                "tierstream_actions_dead_letters_total",
                "kind, channel",
                "dead {{kind}} {{channel}}",
            ),
            increase(
                "tierstream_actions_log_fallbacks_total",
                "kind, channel, reason",
                "logged {{kind}} for {{channel}} ({{reason}})",
            ),
            increase(
                "tierstream_actions_template_failures_total", "kind", "template failed {{kind}}"
            ),
        ),
        timeseries(
            "Consumers: fenced batches, rewound offsets, failed group commits",
            "short",
            # By `service`, not `__name__`: increase() drops the name, which merged the
            # scorer's and actions' series into one without a legend.
            increase(
                '{__name__=~"tierstream_(scorer|actions)_fenced_batches_total"}',
                "service",
                "{{service}} fenced batches",
            ),
            increase(
                '{__name__=~"tierstream_(scorer|actions)_offsets_rewound_total"}',
                "service, topic",
                "{{service}} rewound {{topic}}",
            ),
            increase(
                '{__name__=~"tierstream_(scorer|actions)_group_commit_failures_total"}',
                "service",
                "{{service}} failed group commits",
            ),
        ),
        timeseries(
            "Background loops: errors and senders' claim rounds",
            "short",
            increase(
                '{__name__=~"tierstream_(scorer|actions)_loop_errors_total"}',
                "service, loop",
                "{{service}} errors {{loop}}",
            ),
            query(
                f"sum by (sender) (rate(tierstream_actions_dispatch_rounds_total[{RATE}]))",
                "rounds/s {{sender}}",
            ),
            desc="A sender whose rounds stop has stalled (TierstreamActionsSenderStalled).",
        ),
        stat(
            "Partitions holding sequence steps",
            "short",
            "max(tierstream_actions_steps_held_partitions)",
            desc="0 in steady state (TierstreamActionsStepsHeld after 30 min).",
        ),
        stat(
            "Scorers on superseded rules",
            "short",
            "sum(tierstream_scorer_rules_superseded)",
            desc="Processes still on an older rules file (TierstreamScorerRulesSuperseded).",
        ),
        stat(
            "Changes published trimmed (1 h)",
            "short",
            "sum(increase(tierstream_scorer_trimmed_changes_total[1h]))",
            desc="Published without attributes to fit the broker's limit"
            " (TierstreamScorerChangesTrimmed).",
        ),
        stat(
            "Records consumers skipped (24 h)",
            "short",
            'sum(increase({__name__=~"tierstream_(scorer|actions)_offsets_skipped_total"}[24h]))',
            desc="Records a consumer will never read: the log did not hold the offset it had"
            " stored (retention, or another log: a topic created again, another cluster)."
            " Log line `records skipped: the log does not hold the stored offset`"
            " (TierstreamOffsetsSkipped).",
        ),
    ]


def row(title: str, y: int) -> Panel:
    """A collapsible row header."""
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
    }


def layout(sections: list[tuple[str, list[Panel]]]) -> list[Panel]:
    """Place panels two per line (stats take a quarter) under their row headers."""
    out: list[Panel] = []
    y = 0
    for title, panels in sections:
        out.append(row(title, y))
        y, x = y + 1, 0
        for panel in panels:
            w = 6 if panel["type"] == "stat" else 12
            if x + w > 24:
                y, x = y + 8, 0
            out.append(dict(panel, gridPos={"h": 8, "w": w, "x": x, "y": y}))
            x += w
        y += 8
    for i, panel in enumerate(out, start=1):
        panel["id"] = i
    return out


def build() -> dict[str, Any]:
    """The whole dashboard model."""
    sections = [
        ("Ingest", ingest_panels()),
        ("Pipeline: lag and latency", lag_panels()),
        ("Customers, actions and deliveries", business_panels()),
        ("Faults", fault_panels()),
    ]
    return {
        "uid": "tierstream-overview",
        "title": "Tierstream",
        "tags": ["tierstream"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": layout(sections),
    }


def render() -> str:
    """The dashboard as the JSON text that is committed."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Write the dashboard, or with --check report whether the committed one is current."""
    if "--check" in argv:
        if TARGET.exists() and TARGET.read_text() == render():
            return 0
        print(f"{TARGET} is out of date: run python deploy/grafana/build_dashboard.py")
        return 1
    TARGET.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
