"""Fixtures of the fault suite: a private broker, a migrated database, the process harness."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from services.actions.db import migrate as migrate_actions
from shared.embedded import EmbeddedKafka
from shared.migrations import upgrade
from tests.faults.harness import Harness


@pytest.fixture
def private_broker() -> Iterator[EmbeddedKafka]:
    """A broker of this test alone: killed members of one test never delay another's group."""
    broker = EmbeddedKafka().start()
    yield broker
    broker.kill()  # stop() would wait for connections the killed services left behind


@pytest.fixture
async def pipeline_db(database_url: str) -> str:
    """The test's fresh database with the scorer and actions schemas migrated."""
    await asyncio.to_thread(upgrade, database_url, "scorer")
    await migrate_actions(database_url)
    return database_url


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Service subprocesses of this test; their logs are printed when the test fails."""
    owned = Harness(tmp_path)
    yield owned
    owned.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for name, tail in owned.logs():
            print(f"\n----- {name} (last lines) -----\n{tail}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
