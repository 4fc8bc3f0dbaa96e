"""deploy/k8s: manifests parse, and probes, ports, selectors and scaling line up with the
services' settings and topics."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.actions.settings import ActionsSettings
from services.ingest.settings import IngestSettings
from services.scorer.settings import ScorerSettings
from shared.settings import ServiceSettings
from shared.topics import SCORER_GROUP, Topics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
SETTINGS: dict[str, type[ServiceSettings]] = {
    "ingest": IngestSettings,
    "scorer": ScorerSettings,
    "actions": ActionsSettings,
}
Doc = dict[str, Any]


@cache
def _docs() -> list[Doc]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return out


def _one(kind: str, name: str) -> Doc:
    (doc,) = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(service: str) -> Doc:
    pod = _one("Deployment", f"tierstream-{service}")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def _env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _port_of(service: str) -> int:
    return SETTINGS[service].model_fields["port"].default  # type: ignore[no-any-return]


def test_every_manifest_parses_and_has_kind_and_name() -> None:
    docs = _docs()
    assert len(docs) >= 15
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"]
        assert doc["kind"] == "Kustomization" or doc["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml", "podmonitor.yaml"}


@pytest.mark.parametrize("service", SETTINGS)
def test_container_listens_on_the_service_port_on_all_interfaces(service: str) -> None:
    container = _container(service)
    (port,) = container["ports"]
    assert port["containerPort"] == _port_of(service)
    env = _env(container)
    assert env[f"{service.upper()}_HOST"] == "0.0.0.0"
    assert int(env[f"{service.upper()}_PORT"]) == _port_of(service)
    assert container["args"] == [service]


@pytest.mark.parametrize("service", SETTINGS)
def test_probes_hit_healthz_and_readyz_on_the_container_port(service: str) -> None:
    container = _container(service)
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    assert readiness["httpGet"]["path"] == "/readyz"
    for probe in (liveness, readiness, container["startupProbe"]):
        port = probe["httpGet"]["port"]
        assert names.get(port, port) == _port_of(service)


@pytest.mark.parametrize("service", SETTINGS)
def test_service_selects_the_deployment_pods_and_targets_the_container_port(service: str) -> None:
    deployment = _one("Deployment", f"tierstream-{service}")["spec"]
    svc = _one("Service", f"tierstream-{service}")["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= pod_labels.items()
    assert deployment["selector"]["matchLabels"].items() <= pod_labels.items()
    names = {p["name"]: p["containerPort"] for p in _container(service)["ports"]}
    (port,) = svc["ports"]
    assert names.get(port["targetPort"], port["targetPort"]) == _port_of(service)
    assert port["port"] == _port_of(service)


@pytest.mark.parametrize("service", SETTINGS)
def test_disruption_budget_covers_the_deployment_pods(service: str) -> None:
    pdb = _one("PodDisruptionBudget", f"tierstream-{service}")["spec"]
    pod_labels = _one("Deployment", f"tierstream-{service}")["spec"]["template"]["metadata"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels["labels"].items()
    assert "minAvailable" in pdb or "maxUnavailable" in pdb


@pytest.mark.parametrize("service", SETTINGS)
def test_metrics_are_announced_on_the_service_port(service: str) -> None:
    template = _one("Deployment", f"tierstream-{service}")["spec"]["template"]["metadata"]
    annotations = template["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _port_of(service)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(
    ("service", "group", "topics"),
    [
        ("scorer", SCORER_GROUP, set(Topics().events)),
        (
            "actions",
            ActionsSettings.model_fields["consumer_group"].default,
            {Topics().tier_changed, Topics().purchases},
        ),
    ],
)
def test_keda_scales_consumers_on_group_lag_up_to_the_partition_count(
    service: str, group: str, topics: set[str]
) -> None:
    scaled = _one("ScaledObject", f"tierstream-{service}")["spec"]
    config = _one("ConfigMap", "tierstream-config")["data"]
    assert scaled["scaleTargetRef"]["name"] == f"tierstream-{service}"
    assert scaled["maxReplicaCount"] == int(config["TIERSTREAM_PARTITIONS"]) == 6
    kafka = [t["metadata"] for t in scaled["triggers"] if t["type"] == "kafka"]
    assert {t["consumerGroup"] for t in kafka} == {group}
    assert {t["topic"] for t in kafka} == topics
    assert all(t["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"] for t in kafka)
    assert "replicas" not in _one("Deployment", f"tierstream-{service}")["spec"]


def test_secrets_come_from_the_secret_and_the_example_names_every_key() -> None:
    example = set(_one("Secret", "tierstream-secrets")["stringData"])
    refs = set()
    for doc in _docs():
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for value in _env(container).values():
                    if isinstance(value, dict) and "secretKeyRef" in value:
                        assert value["secretKeyRef"]["name"] == "tierstream-secrets"
                        refs.add(value["secretKeyRef"]["key"])
    assert refs == example
    assert {"TIERSTREAM_API_KEYS", "ACTIONS_WEBHOOK_SECRET", "DATABASE_URL"} <= refs


def test_rules_and_playbooks_are_mounted_where_the_settings_point() -> None:
    domain = _one("ConfigMap", "tierstream-domain")["data"]
    for service, variable, key in (
        ("scorer", "SCORER_RULES_FILE", "rules.yaml"),
        ("actions", "ACTIONS_PLAYBOOKS_FILE", "playbooks.yaml"),
        ("actions", "ACTIONS_RULES_FILE", "rules.yaml"),  # the scorer's, for the classes
    ):
        container = _container(service)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "domain"]
        assert _env(container)[variable] == f"{mount['mountPath']}/{key}"
        assert key in domain


def test_the_domain_configmap_carries_the_shipped_rules_and_playbooks() -> None:
    script = K8S / "domain_configmap.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_migrate_job_runs_the_migrate_command_against_the_secret_database() -> None:
    (job,) = [d for d in _docs() if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert _env(container)["DATABASE_URL"]["secretKeyRef"]["key"] == "DATABASE_URL"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_scorer_pods_of_two_releases_never_run_together() -> None:
    # Old and new rules would each move the other's customers back (a rolling deploy).
    assert _one("Deployment", "tierstream-scorer")["spec"]["strategy"] == {"type": "Recreate"}
