"""The business measures actions exports for dashboards: tasks done late (the SLA breached)
per queue, and sequence exits by reason, counted from the tables."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from services.actions.db import create_pool
from services.actions.metrics import actions_metrics
from services.actions.workers import _gauge_step
from shared.clock import FixedClock
from shared.metrics import new_registry
from tests.integration.actions.support import NOW

HOUR = timedelta(hours=1)


async def test_tasks_done_late_and_exits_by_reason_are_exported(actions_db: str) -> None:
    conn = await asyncpg.connect(actions_db)
    try:
        tasks = [  # (customer, queue, status, due, completed)
            ("a", "care", "done", NOW - HOUR, NOW),  # late
            ("b", "care", "done", NOW, NOW - HOUR),  # on time
            ("c", "care", "done", NOW, NOW),  # on the dot is on time
            ("d", "care", "open", NOW - HOUR, None),  # overdue, not done
            ("e", "sales", "done", NOW, NOW - HOUR),
        ]
        for customer, queue, status, due, completed in tasks:
            await conn.execute(
                "INSERT INTO actions.task (customer_id, tier_change_id, playbook, title, queue,"
                " priority, status, due_at, created_at, updated_at, completed_at)"
                " VALUES ($1, $1, $1, 't', $2, 'normal', $3, $4, $5, $5, $6)",
                customer, queue, status, due, NOW - 2 * HOUR, completed,
            )  # fmt: skip
        enrolments = [  # (customer, sequence, status, exit reason)
            ("a", "win_back", "exited", "goal:purchase"),
            ("b", "win_back", "exited", "goal:purchase"),
            ("c", "welcome", "exited", "lifecycle_stage:at_risk"),
            ("d", "welcome", "completed", None),
            ("e", "welcome", "active", None),
        ]
        for customer, sequence, status, reason in enrolments:
            ended = None if status == "active" else NOW
            await conn.execute(
                "INSERT INTO actions.enrolment (customer_id, sequence, playbook, tier_change_id,"
                " trigger_at, enrolled_at, status, exit_reason, ended_at)"
                " VALUES ($1, $2, $2, $1, $3, $3, $4, $5, $6)",
                customer, sequence, NOW - 2 * HOUR, status, reason, ended,
            )  # fmt: skip
    finally:
        await conn.close()
    registry = new_registry()
    pool = await create_pool(actions_db, size=2, application_name="test")
    try:
        await _gauge_step(pool, FixedClock(NOW), actions_metrics(registry))()
    finally:
        await pool.close()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"tierstream_actions_{name}", labels)

    assert value("tasks_done_late", queue="care") == 1
    assert value("tasks_done_late", queue="sales") == 0
    assert value("tasks_overdue", queue="care") == 1
    assert value("enrolment_exits", sequence="win_back", reason="goal:purchase") == 2
    assert value("enrolment_exits", sequence="welcome", reason="lifecycle_stage:at_risk") == 1
    assert value("enrolments", sequence="welcome", status="completed") == 1
