"""Fixtures of the actions integration tests: a migrated database and a fixed clock."""

from __future__ import annotations

import pytest

from services.actions.db import migrate
from shared.clock import FixedClock
from tests.integration.actions.support import NOW


@pytest.fixture
async def actions_db(database_url: str) -> str:
    """The test's fresh database with the actions migrations applied."""
    await migrate(database_url)
    return database_url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)
