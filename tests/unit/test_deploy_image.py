"""The Dockerfile's image can run everything the deploy configuration lets an operator turn on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _installed_extras() -> set[str]:
    (spec,) = re.findall(
        r"pip install [^\n]*?'?\.\[([^\]]*)\]'?", (ROOT / "Dockerfile").read_text()
    )
    return {extra.strip() for extra in spec.split(",")}


def test_the_image_installs_the_tracing_sdk_the_configmap_points_at() -> None:
    # TIERSTREAM_TRACING=otlp (with the configmap's OTEL_EXPORTER_OTLP_ENDPOINT) needs the
    # OpenTelemetry SDK; without it the services refuse to start.
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in (ROOT / "deploy/k8s/configmap.yaml").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tracing" in extras["optional-dependencies"]
    assert "tracing" in _installed_extras()
