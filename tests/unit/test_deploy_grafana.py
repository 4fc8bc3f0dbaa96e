"""deploy/grafana: the committed dashboard is the generated one, and it uses the provisioned
datasource and covers what issue 6 asks ops to see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy/grafana"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards/tierstream.json").read_text())
    return data


def test_committed_dashboard_is_what_the_builder_produces() -> None:
    script = GRAFANA / "build_dashboard.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_every_query_uses_the_provisioned_prometheus_datasource() -> None:
    provisioning = GRAFANA / "provisioning/datasources/prometheus.yml"
    (source,) = yaml.safe_load(provisioning.read_text())["datasources"]
    assert source["type"] == "prometheus"
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": source["uid"]}


def test_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/tierstream.yml").read_text())
    (entry,) = provider["providers"]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"./deploy/grafana/dashboards:{entry['options']['path']}:ro" in compose


def test_panels_fit_the_grid_with_unique_ids() -> None:
    panels = _dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_dashboard_shows_everything_issue_6_lists() -> None:
    titles = " | ".join(p["title"].lower() for p in _dashboard()["panels"])
    for topic in (
        "ingest events",
        "ingest http errors",
        "consumer lag",
        "processing latency",
        "customers per value tier",
        "transitions",
        "actions planned",
        "deliveries",
        "overdue",
        "dead letters",
    ):
        assert topic in titles, topic


def _colour(panel: dict[str, Any], value: float) -> str:
    """The colour Grafana gives `value`: that of the last threshold step at or below it."""
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    colour: str = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            colour = step["color"]
    return colour


def test_stat_panels_are_green_when_healthy_and_red_when_not() -> None:
    stats = {p["title"]: p for p in _dashboard()["panels"] if p["type"] == "stat"}
    healthy_and_not = {
        "Broker reachable from every ingest": (1, 0),
        "Overdue tasks": (0, 1),
        "Partitions held back from time sweeps": (0, 1),
    }
    assert healthy_and_not.keys() <= stats.keys()
    for title, (good, bad) in healthy_and_not.items():
        assert (_colour(stats[title], good), _colour(stats[title], bad)) == ("green", "red"), title


def test_no_query_groups_by_the_metric_name() -> None:
    # rate() and increase() drop `__name__`: grouping by it after them merged the scorer's
    # and actions' series into one without a legend.
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            assert "__name__," not in target["expr"] and "(__name__)" not in target["expr"], panel[
                "title"
            ]


def test_request_latency_quantiles_leave_out_probes_and_scrapes() -> None:
    exprs = [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])
             if "tierstream_ingest_request_duration_seconds_bucket" in t["expr"]]  # fmt: skip
    assert exprs and all('route=~"/v1/events.*"' in e for e in exprs)
