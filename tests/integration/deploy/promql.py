"""What the services export and what the deploy files query, for comparing the two."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.actions.metrics import actions_metrics
from services.ingest.metrics import IngestMetrics
from services.scorer.metrics import scorer_metrics
from shared.metrics import request_duration

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/tierstream.json"
K8S = ROOT / "deploy/k8s"
# Labels Prometheus adds at scrape time (deploy/prometheus/prometheus.yml, the PodMonitor).
TARGET_LABELS = frozenset({"job", "instance", "service", "pod"})
# Metrics of Prometheus itself that rules may use.
PROMETHEUS_METRICS = frozenset({"up"})
PATTERN = "~"  # a Selector whose metric is a `__name__` regular expression
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


@dataclasses.dataclass(frozen=True)
class Selector:
    """One metric selector in a query, with the labels the query relies on."""

    metric: str
    labels: frozenset[str]


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics text can produce, suffixes included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def declared_labels() -> dict[str, set[str]]:
    """Series name -> label names, from the services' metric definitions."""
    registry = CollectorRegistry()
    groups = (IngestMetrics.create(registry), scorer_metrics(registry), actions_metrics(registry))
    instruments = [getattr(g, f.name) for g in groups for f in dataclasses.fields(g)]
    # The read and task APIs' timing is registered with their app, not in those groups.
    instruments += [request_duration(registry, service) for service in ("scorer", "actions")]
    out: dict[str, set[str]] = {}
    for instrument in instruments:  # private attributes: prometheus_client has no public ones
        kind, labels = instrument._type, set(instrument._labelnames)
        base = instrument._name
        for suffix in SUFFIXES[kind]:
            out[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def selectors(expr: str) -> list[Selector]:
    """Each metric selector of a PromQL expression with its matcher and grouping labels."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: list[Selector] = []
    grouping: list[tuple[set[str], promql_parser.Expr]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = frozenset(m.name for m in node.matchers.matchers) - {"__name__"}
            # `{__name__=~"a|b"}` names its metrics by a pattern: kept as one, every series
            # name it matches is checked (and it must match one).
            patterns = [m.value for m in node.matchers.matchers
                        if m.name == "__name__" and m.op == promql_parser.MatchOp.Re]  # fmt: skip
            name = node.name or (f"{PATTERN}{patterns[0]}" if patterns else None)
            if name:
                found.append(Selector(name, labels))
        if not isinstance(node, promql_parser.AggregateExpr) or node.modifier is None:
            return
        if node.modifier.type == promql_parser.AggModifierType.By:
            grouping.append((set(node.modifier.labels), node.expr))

    promql_parser.walk(promql_parser.parse(expr), visit)
    for labels, inner in grouping:  # `by (x)` relies on x existing on what it aggregates
        for metric in {s.metric for s in selectors(str(inner))}:
            found.append(Selector(metric, frozenset(labels)))
    return found


def alert_expressions() -> Iterator[tuple[str, str]]:
    """(alert name, expression) of every rule in alerts.yml."""
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query in the Grafana dashboard."""
    for panel in _panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def keda_expressions() -> Iterator[tuple[str, str]]:
    """(ScaledObject name, query) of every Prometheus trigger in deploy/k8s."""
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ScaledObject":
                for trigger in doc["spec"]["triggers"]:
                    if trigger["type"] == "prometheus":
                        yield doc["metadata"]["name"], trigger["metadata"]["query"]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def unknown_references(
    queries: list[tuple[str, str]], names: set[str], labels: dict[str, set[str]]
) -> list[str]:
    """Every metric or label a query names that the services do not export."""
    problems = []
    for where, expr in queries:
        for sel in selectors(expr):
            if sel.metric in PROMETHEUS_METRICS:
                continue
            metrics = [sel.metric]
            if sel.metric.startswith(PATTERN):
                pattern = sel.metric.removeprefix(PATTERN)
                metrics = sorted(n for n in names if re.fullmatch(pattern, n))
                if not metrics:
                    problems.append(f"{where}: no exported metric matches {pattern!r}")
            for metric in metrics:
                if metric not in names:
                    problems.append(f"{where}: metric {metric} is not exported")
                    continue
                missing = sel.labels - labels.get(metric, set()) - TARGET_LABELS - {"__name__"}
                if missing:
                    problems.append(f"{where}: {metric} has no label {sorted(missing)}")
    return problems
