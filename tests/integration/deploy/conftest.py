"""One run of the whole pipeline per module: the deploy tests read its /metrics output."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.integration.deploy.pipeline import exercise


@pytest.fixture(scope="module")
def scraped(kafka_bootstrap: str, pg_server_url: str) -> dict[str, str]:
    """{service: /metrics text} after real traffic went through ingest, scorer and actions."""
    return asyncio.run(exercise(kafka_bootstrap, pg_server_url))


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool's path; missing is a failure, not a skip (`make promtool` installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run `make promtool` (as root it installs the Debian "
            "package `prometheus`) or `apt-get install prometheus`; the deploy checks need it"
        )
    return path
