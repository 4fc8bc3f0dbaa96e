"""Fixtures of the scorer integration tests: a migrated database and a fixed clock."""

from __future__ import annotations

import asyncio

import pytest

from shared.clock import FixedClock
from shared.migrations import upgrade
from tests.integration.scorer.support import NOW


@pytest.fixture
async def scorer_db(database_url: str) -> str:
    """The test's fresh database with the scorer's migrations applied."""
    await asyncio.to_thread(upgrade, database_url, "scorer")
    return database_url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)
