"""One batch of tier changes leaves the same tasks and enrolments, and counts the same, as
the same changes applied one at a time (each in a batch of its own), in real Postgres."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.actions.batch import GoalHit
from services.actions.db import Pool, create_pool
from shared.contracts import TierChanged
from shared.domain.playbooks import Playbooks, default_playbooks_path, load_playbooks
from tests.integration.actions.seeding import apply_changes, apply_goals
from tests.integration.actions.support import DAY, NOW, fetch, tier_change

HOUR = timedelta(hours=1)
APPLIED_AT = NOW + 6 * HOUR  # every batch is applied after all the changes were decided
TASKS = (
    "SELECT customer_id, tier_change_id, playbook, title, queue, priority, assignee, status,"
    " due_at, triggers, created_at, updated_at, completed_at FROM actions.task"
    " ORDER BY customer_id, playbook"
)
ENROLMENTS = (
    "SELECT customer_id, sequence, playbook, tier_change_id, trigger_at, status, exit_reason,"
    " enrolled_at, ended_at FROM actions.enrolment ORDER BY id"
)


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=2, application_name="test")
    yield pool
    await pool.close()


@dataclass
class Outcome:
    """The rows a query reads afterwards, and what the batches counted for the metrics."""

    rows: list[dict[str, Any]]
    enrolled: Counter[str] = field(default_factory=Counter)
    cancelled_steps: Counter[str] = field(default_factory=Counter)


async def _together_and_apart(
    pool: Pool, database_url: str, query: str, earlier: list[TierChanged],
    batch: list[TierChanged], goals: list[GoalHit] | None = None,
    playbooks: Playbooks | None = None,
) -> tuple[Outcome, Outcome]:  # fmt: skip
    """After `goals` and `earlier` (one at a time): `batch` applied as one batch, then, from
    scratch, one change at a time."""
    outcomes = []
    for batches in ([batch], [[change] for change in batch]):
        await pool.execute(
            "TRUNCATE actions.task, actions.delivery, actions.enrolment, actions.inbox,"
            " actions.goal_event, actions.latest_change"
        )
        if goals:
            await apply_goals(pool, goals, now=APPLIED_AT)
        for change in earlier:
            await apply_changes(pool, [change], now=APPLIED_AT, playbooks=playbooks)
        outcome = Outcome([])
        for changes in batches:
            result = await apply_changes(pool, changes, now=APPLIED_AT, playbooks=playbooks)
            outcome.enrolled += result.enrolled
            outcome.cancelled_steps += result.cancelled_steps
        outcome.rows = await fetch(database_url, query)
        outcomes.append(outcome)
    together, apart = outcomes
    return together, apart


@pytest.mark.parametrize("open_before", [False, True], ids=["new_task", "open_task"])
async def test_a_task_triggered_twice_in_a_batch_keeps_the_first_due_time_and_counts_both(
    pool: Pool, actions_db: str, open_before: bool
) -> None:
    earlier = [tier_change("g0", "c", "value_tier", "silver", "gold", at=NOW - HOUR)]
    batch = [
        tier_change("g1", "c", "value_tier", "silver", "gold", at=NOW),
        tier_change("d1", "c", "value_tier", "gold", "silver", at=NOW + HOUR),
        tier_change("g2", "c", "value_tier", "bronze", "gold", at=NOW + 5 * HOUR),
    ]
    together, apart = await _together_and_apart(
        pool, actions_db, TASKS, earlier if open_before else [], batch
    )
    assert together.rows == apart.rows
    [gold] = [t for t in together.rows if t["playbook"] == "gold_upgrade"]
    first_due = (NOW - HOUR if open_before else NOW) + 2 * DAY  # an SLA already running
    assert (gold["tier_change_id"], gold["due_at"], gold["triggers"]) == (
        "g2", first_due, 3 if open_before else 2,
    )  # fmt: skip


FLAPPING = [
    tier_change("g0", "c", "value_tier", "silver", "gold", at=NOW),
    tier_change("d1", "c", "value_tier", "gold", "silver", at=NOW + HOUR),
    tier_change("g2", "c", "value_tier", "silver", "gold", at=NOW + 2 * HOUR),
    tier_change("d3", "c", "value_tier", "gold", "bronze", at=NOW + 3 * HOUR),
    tier_change("g4", "c", "value_tier", "bronze", "gold", at=NOW + 4 * HOUR),
]


def _without_cool_down(folder: Path) -> Playbooks:
    """The default playbooks with vip_welcome's re-entry allowed at once."""
    text = default_playbooks_path().read_text(encoding="utf-8")
    assert text.count("reentry_after: 30d") == 1
    edited = folder / "playbooks.yaml"
    edited.write_text(text.replace("reentry_after: 30d", "reentry_after: 0d"), encoding="utf-8")
    return load_playbooks(edited)


@pytest.mark.parametrize("active_before", [True, False], ids=["active_before", "all_in_batch"])
async def test_enrolments_begun_and_ended_in_a_batch_are_kept_as_one_change_at_a_time(
    pool: Pool, actions_db: str, active_before: bool, tmp_path: Path
) -> None:
    # In and out of gold: every upgrade enrols in vip_welcome (re-entry allowed at once),
    # every downgrade ends it (the reason names the tier it went to).
    earlier, batch = (FLAPPING[:1], FLAPPING[1:]) if active_before else ([], FLAPPING)
    together, apart = await _together_and_apart(pool, actions_db, ENROLMENTS, earlier, batch,
                                                playbooks=_without_cool_down(tmp_path))  # fmt: skip
    assert together == apart
    assert [(e["tier_change_id"], e["status"], e["exit_reason"]) for e in together.rows] == [
        ("g0", "exited", "value_tier:silver"),
        ("g2", "exited", "value_tier:bronze"),
        ("g4", "active", None),
    ]
    enrolled = 2 if active_before else 3
    assert together.enrolled == Counter({"vip_welcome": enrolled})
    # Two steps each: those of g0 cancelled by d1, those of g2 by d3 (never stored in one batch).
    assert together.cancelled_steps == Counter({"vip_welcome": 4})


@pytest.mark.parametrize("active_before", [True, False], ids=["active_before", "all_in_batch"])
async def test_the_default_vip_welcome_is_not_entered_again_within_its_cool_down(
    pool: Pool, actions_db: str, active_before: bool
) -> None:
    # The default vip_welcome waits 30 days after an enrolment ended: in and out of gold
    # within hours sends the welcome note once.
    earlier, batch = (FLAPPING[:1], FLAPPING[1:]) if active_before else ([], FLAPPING)
    together, apart = await _together_and_apart(pool, actions_db, ENROLMENTS, earlier, batch)
    assert together == apart
    assert [(e["tier_change_id"], e["status"], e["exit_reason"]) for e in together.rows] == [
        ("g0", "exited", "value_tier:silver"),
    ]
    assert together.enrolled == Counter({"vip_welcome": 0 if active_before else 1})
    assert together.cancelled_steps == Counter({"vip_welcome": 2})


@pytest.mark.parametrize("bought", [True, False], ids=["goal_after_the_first", "no_goal"])
async def test_of_two_enrolments_in_a_batch_the_first_the_goal_check_admits_is_enrolled(
    pool: Pool, actions_db: str, bought: bool
) -> None:
    # at_risk twice, reactivated in between (which ends a win-back): one change at a time,
    # a purchase after the first at_risk refuses that enrolment (nothing to win back), and
    # the second at_risk, after the purchase, enrols. The batch kept only the first request.
    # Without the purchase, the first enrols and ends, and the second enrols.
    batch = [
        tier_change("r1", "c", "lifecycle_stage", "established", "at_risk", at=NOW),
        tier_change("r2", "c", "lifecycle_stage", "at_risk", "reactivated", at=NOW + 2 * HOUR),
        tier_change("r3", "c", "lifecycle_stage", "reactivated", "at_risk", at=NOW + 50 * HOUR),
    ]
    goals = [GoalHit("c", NOW + HOUR, "p1")] if bought else []
    together, apart = await _together_and_apart(pool, actions_db, ENROLMENTS, [], batch, goals)
    assert together == apart
    wins = [
        (e["tier_change_id"], e["status"]) for e in together.rows if e["sequence"] == "win_back"
    ]
    assert wins == ([] if bought else [("r1", "exited")]) + [("r3", "active")]
    assert together.enrolled["win_back"] == (1 if bought else 2)
