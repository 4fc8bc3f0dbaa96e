"""The one-open-task and one-active-enrolment guarantees hold in the database, not only in code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.actions.batch import PlannedChange, apply_batch
from services.actions.db import Pool, create_pool
from shared.db import asyncpg_dsn
from shared.domain.playbooks import default_playbooks_path, load_playbooks, plan_actions
from tests.integration.actions.seeding import LOG_ONLY, apply_changes
from tests.integration.actions.support import DAY, NOW, fetch, tier_change

BOOKS = load_playbooks(default_playbooks_path())
BATCHES = 6


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=BATCHES + 1, application_name="test")
    yield pool
    await pool.close()


async def test_concurrent_batches_for_one_customer_create_one_task_and_one_enrolment(
    pool: Pool, actions_db: str
) -> None:
    async def batch(i: int) -> None:
        change = tier_change(f"chg-{i}", "cust", "value_tier", "silver", "gold")
        planned = [PlannedChange(change, plan_actions(change, BOOKS))]
        await apply_batch(pool, planned, [], [], group_id="g", playbooks=BOOKS,
                          channels=LOG_ONLY, now=NOW)  # fmt: skip

    await asyncio.gather(*(batch(i) for i in range(BATCHES)))
    tasks = await fetch(actions_db, "SELECT status, triggers FROM actions.task")
    assert tasks == [{"status": "open", "triggers": BATCHES}]
    enrolments = await fetch(actions_db, "SELECT id, sequence, status FROM actions.enrolment")
    assert [(e["sequence"], e["status"]) for e in enrolments] == [("vip_welcome", "active")]
    kinds = await fetch(
        actions_db, "SELECT kind, count(*) AS n FROM actions.delivery GROUP BY kind ORDER BY kind"
    )
    steps = len(BOOKS.sequences["vip_welcome"].steps)
    assert [(k["kind"], k["n"]) for k in kinds] == [("alert", BATCHES), ("step", steps)]


async def test_the_database_refuses_a_second_open_task_or_active_enrolment(
    pool: Pool, actions_db: str
) -> None:
    await apply_changes(pool, [tier_change("c1", "cust", "value_tier", "silver", "gold")], now=NOW)
    conn = await asyncpg.connect(asyncpg_dsn(actions_db))
    try:
        with pytest.raises(asyncpg.UniqueViolationError, match="task_one_open_uq"):
            await conn.execute(
                "INSERT INTO actions.task (customer_id, tier_change_id, playbook, title, queue,"
                " priority, due_at, created_at, updated_at)"
                " SELECT customer_id, 'c2', playbook, title, queue, priority, due_at, created_at,"
                " updated_at FROM actions.task"
            )
        with pytest.raises(asyncpg.UniqueViolationError, match="enrolment_one_active_uq"):
            await conn.execute(
                "INSERT INTO actions.enrolment (customer_id, sequence, playbook, tier_change_id,"
                " trigger_at, enrolled_at) SELECT customer_id, sequence, playbook, 'c2',"
                " trigger_at, enrolled_at FROM actions.enrolment"
            )
        # Only open tasks and active enrolments are unique: history may hold many.
        await conn.execute("UPDATE actions.task SET status = 'done'")
        await conn.execute("UPDATE actions.enrolment SET status = 'exited'")
    finally:
        await conn.close()
    later = NOW + 31 * DAY  # past vip_welcome's re-entry cool-down
    await apply_changes(pool, [tier_change("c3", "cust", "value_tier", "silver", "gold")],
                        now=later)  # fmt: skip
    rows = await fetch(actions_db, "SELECT status FROM actions.task ORDER BY id")
    assert [r["status"] for r in rows] == ["done", "open"]
    rows = await fetch(actions_db, "SELECT status FROM actions.enrolment ORDER BY id")
    assert [r["status"] for r in rows] == ["exited", "active"]
