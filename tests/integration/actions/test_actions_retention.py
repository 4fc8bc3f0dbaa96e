"""Retention against real Postgres: expired inbox rows and goal events go, in bounded batches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.actions.db import Pool, create_pool
from services.actions.metrics import actions_metrics
from services.actions.retention import Retention, prune_step
from shared.clock import FixedClock
from tests.integration.actions.support import DAY, NOW, fetch


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=2, application_name="test")
    yield pool
    await pool.close()


async def _seed(pool: Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO actions.inbox (message_id, processed_at) SELECT m, now() - d * interval"
            " '1 day' FROM unnest($1::text[], $2::int[]) AS x(m, d)",
            ["old-1", "old-2", "old-3", "recent"], [45, 31, 31, 29],
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO actions.goal_event (customer_id, event_type, last_at)"
            " SELECT c, 'purchase', t FROM unnest($1::text[], $2::timestamptz[]) AS x(c, t)",
            ["gone", "kept"], [NOW - 31 * DAY, NOW - 29 * DAY],
        )  # fmt: skip


async def test_rows_past_the_retention_are_pruned_in_batches_and_counted(
    pool: Pool, actions_db: str, clock: FixedClock
) -> None:
    await _seed(pool)
    registry = CollectorRegistry()
    metrics = actions_metrics(registry)
    step = prune_step(pool, Retention(30, timedelta(days=30), batch=2), clock, metrics)
    assert await step() is True  # a full batch: the loop goes again at once
    assert await step() is False
    inbox = await fetch(actions_db, "SELECT message_id FROM actions.inbox")
    assert [r["message_id"] for r in inbox] == ["recent"]
    goals = await fetch(actions_db, "SELECT customer_id FROM actions.goal_event")
    assert [r["customer_id"] for r in goals] == ["kept"]
    pruned = {t: registry.get_sample_value("tierstream_actions_pruned_rows_total", {"table": t})
              for t in ("inbox", "goal_event")}  # fmt: skip
    assert pruned == {"inbox": 3, "goal_event": 1}
    clock.advance(2 * DAY)  # goal events age by the service clock (event time)
    assert await step() is False
    assert await fetch(actions_db, "SELECT customer_id FROM actions.goal_event") == []
    assert await fetch(actions_db, "SELECT message_id FROM actions.inbox") != []  # wall time
