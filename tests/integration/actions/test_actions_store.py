"""The batch transaction against real Postgres: the offset fence, re-entry and goal rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.actions import store
from services.actions.batch import GoalHit, PlannedChange, apply_batch
from services.actions.db import Connection, Pool, create_pool
from services.actions.main import _end_removed_sequences
from services.actions.metrics import actions_metrics
from services.actions.settings import ActionsSettings
from services.actions.workers import Parts
from shared.clock import FixedClock
from shared.domain.playbooks import default_playbooks_path, load_playbooks, plan_actions
from shared.metrics import new_registry
from shared.offsets import Fenced, OffsetMove
from shared.readiness import BrokerCheck
from shared.tracing import make_tracer
from tests.integration.actions.seeding import LOG_ONLY, apply_changes
from tests.integration.actions.support import DAY, NOW, fetch, tier_change

BOOKS = load_playbooks(default_playbooks_path())


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=4, application_name="test")
    yield pool
    await pool.close()


async def _batch(pool: Pool, change_id: str, customer: str, moves: list[OffsetMove]) -> None:
    change = tier_change(change_id, customer, "value_tier", "silver", "gold")
    await apply_batch(pool, [PlannedChange(change, plan_actions(change, BOOKS))], [], moves,
                      group_id="g", playbooks=BOOKS, channels=LOG_ONLY, now=NOW)  # fmt: skip


async def test_a_batch_behind_the_offset_fence_is_rolled_back_entirely(
    pool: Pool, actions_db: str
) -> None:
    await _batch(pool, "c1", "first", [OffsetMove("t", 0, None, 5)])
    await _batch(pool, "c2", "second", [OffsetMove("t", 0, 5, 9)])
    with pytest.raises(Fenced):  # a zombie that still thinks the partition is at 5
        await _batch(pool, "c3", "zombie", [OffsetMove("t", 0, 5, 12)])
    with pytest.raises(Fenced):  # a zombie that read no stored offset at all
        await _batch(pool, "c4", "zombie", [OffsetMove("t", 0, None, 12)])
    tasks = await fetch(actions_db, "SELECT customer_id FROM actions.task ORDER BY id")
    assert [t["customer_id"] for t in tasks] == ["first", "second"]
    assert await fetch(actions_db, "SELECT 1 FROM actions.inbox WHERE message_id LIKE '%c3'") == []
    offsets = await fetch(actions_db, "SELECT next_offset FROM actions.consumer_offset")
    assert offsets == [{"next_offset": 9}]


async def _enrolments(
    database_url: str, customer: str, sequence: str | None = None
) -> list[tuple[str, str, str | None]]:
    rows = await fetch(database_url, "SELECT sequence, status, exit_reason FROM actions.enrolment"
                       " WHERE customer_id = $1 ORDER BY id", customer)  # fmt: skip
    return [
        (r["sequence"], r["status"], r["exit_reason"])
        for r in rows
        if sequence in (None, r["sequence"])
    ]


async def test_welcome_is_never_entered_twice_but_win_back_may_be(
    pool: Pool, actions_db: str
) -> None:
    await apply_changes(pool, [tier_change("1", "c", "lifecycle_stage", "lead", "new")], now=NOW)
    twice = tier_change("1b", "c", "lifecycle_stage", "lead", "new", at=NOW + DAY / 2)
    result = await apply_changes(pool, [twice], now=NOW + DAY / 2)  # welcome still running
    assert result.refused == {("welcome", "already_active"): 1}  # not `reentry_never`
    at_risk = tier_change("2", "c", "lifecycle_stage", "new", "at_risk")
    await apply_changes(pool, [at_risk], now=NOW + DAY)
    await apply_batch(pool, [], [GoalHit("c", NOW + 2 * DAY)], [], group_id="g", playbooks=BOOKS,
                      channels=LOG_ONLY, now=NOW + 2 * DAY)  # fmt: skip
    again = [
        tier_change("3", "c", "lifecycle_stage", "reactivated", "new", at=NOW + 3 * DAY),
        tier_change("4", "c", "lifecycle_stage", "new", "churned", at=NOW + 4 * DAY),
    ]
    result = await apply_changes(pool, again, now=NOW + 4 * DAY)
    assert result.refused == {("welcome", "reentry_never"): 1}
    churned = tier_change("5", "c", "lifecycle_stage", "at_risk", "churned", at=NOW + 5 * DAY)
    result = await apply_changes(pool, [churned], now=NOW + 5 * DAY)  # in win_back now
    assert result.refused == {("win_back", "already_active"): 1}
    assert await _enrolments(actions_db, "c") == [
        ("welcome", "exited", "lifecycle_stage:at_risk"),
        ("win_back", "exited", "goal:purchase"),
        ("win_back", "active", None),
    ]


async def test_a_batch_with_enrolment_exit_and_reentry_decides_as_one_change_at_a_time(
    pool: Pool, actions_db: str
) -> None:
    # lead -> new -> at_risk -> new in one batch: welcome began and ended (history, no
    # steps), so `reentry: never` refuses the second; win_back began and ended too (no
    # longer at risk), with no steps either.
    batch = [
        tier_change("1", "c", "lifecycle_stage", "lead", "new", at=NOW),
        tier_change("2", "c", "lifecycle_stage", "new", "at_risk", at=NOW),
        tier_change("3", "c", "lifecycle_stage", "at_risk", "new", at=NOW),
    ]
    await apply_changes(pool, batch, now=NOW)
    assert await _enrolments(actions_db, "c") == [
        ("welcome", "exited", "lifecycle_stage:at_risk"),
        ("win_back", "exited", "lifecycle_stage:new"),
    ]
    steps = await fetch(actions_db, "SELECT e.sequence FROM actions.delivery d JOIN"
                        " actions.enrolment e ON e.id = d.enrolment_id")  # fmt: skip
    assert steps == []
    # A later batch reads the same history: still no second welcome.
    later = [tier_change("4", "c", "lifecycle_stage", "new", "at_risk", at=NOW + DAY),
             tier_change("5", "c", "lifecycle_stage", "at_risk", "new", at=NOW + DAY)]  # fmt: skip
    await apply_changes(pool, later, now=NOW + DAY)
    assert await _enrolments(actions_db, "c", "welcome") == [
        ("welcome", "exited", "lifecycle_stage:at_risk")
    ]


async def test_an_enrolment_begun_and_ended_in_a_batch_leaves_an_active_one_alone(
    pool: Pool, actions_db: str
) -> None:
    await apply_changes(pool, [tier_change("1", "c", "lifecycle_stage", "lead", "new")], now=NOW)
    # Welcome is active: the batch's own enrolment would be refused, its exit ends the first.
    batch = [tier_change("2", "c", "lifecycle_stage", "at_risk", "new", at=NOW + DAY),
             tier_change("3", "c", "lifecycle_stage", "new", "churned", at=NOW + DAY)]  # fmt: skip
    await apply_changes(pool, batch, now=NOW + DAY)
    assert await _enrolments(actions_db, "c", "welcome") == [
        ("welcome", "exited", "lifecycle_stage:churned")
    ]


async def test_a_purchase_after_the_change_means_there_is_nothing_to_win_back(
    pool: Pool, actions_db: str
) -> None:
    # The purchase arrives first (another topic), but happened after the change.
    await apply_batch(pool, [], [GoalHit("c", NOW + DAY)], [], group_id="g", playbooks=BOOKS,
                      channels=LOG_ONLY, now=NOW + DAY)  # fmt: skip
    result = await apply_changes(
        pool, [tier_change("1", "c", "lifecycle_stage", "new", "at_risk")], now=NOW
    )
    assert await _enrolments(actions_db, "c") == []
    assert result.refused == {("win_back", "goal_reached"): 1}  # counted, not silent
    # An earlier purchase does not count.
    await apply_batch(pool, [], [GoalHit("d", NOW - DAY)], [], group_id="g", playbooks=BOOKS,
                      channels=LOG_ONLY, now=NOW)  # fmt: skip
    await apply_changes(pool, [tier_change("2", "d", "lifecycle_stage", "new", "at_risk")], now=NOW)
    assert await _enrolments(actions_db, "d") == [("win_back", "active", None)]


@pytest.mark.parametrize("order", ["purchase_first", "change_first", "one_batch"])
async def test_the_old_purchase_a_change_was_decided_on_does_not_stop_its_win_back(
    pool: Pool, actions_db: str, order: str
) -> None:
    # A history import (or a late event): a new customer's only purchase, 100 days old, makes
    # them at_risk, and the change carries that purchase's time. It is the reason to win them
    # back, not a return: before, the enrolment was refused (goal_reached), or, the purchase
    # read after the change, ended at once (goal:purchase).
    bought = NOW - 100 * DAY
    goal = GoalHit("e", bought, "p-old")
    change = tier_change("3", "e", "lifecycle_stage", None, "at_risk", at=bought)
    planned = [PlannedChange(change, plan_actions(change, BOOKS))]
    batches = {"purchase_first": [([], [goal]), (planned, [])],
               "change_first": [(planned, []), ([], [goal])],
               "one_batch": [(planned, [goal])]}[order]  # fmt: skip
    refused: list[dict[tuple[str, str], int]] = []
    for changes, goals in batches:
        result = await apply_batch(pool, changes, goals, [], group_id="g", playbooks=BOOKS,
                                   channels=LOG_ONLY, now=NOW)  # fmt: skip
        refused.append(dict(result.refused))
    assert refused == [{}] * len(batches)
    assert await _enrolments(actions_db, "e") == [("win_back", "active", None)]
    steps = await fetch(actions_db, "SELECT status FROM actions.delivery WHERE kind = 'step'")
    assert [s["status"] for s in steps] == ["pending"] * 3
    # A purchase after it, even by a second, is buying again.
    await apply_batch(pool, [], [GoalHit("e", bought + DAY / 86400, "p-new")], [],
                      group_id="g", playbooks=BOOKS, channels=LOG_ONLY, now=NOW)  # fmt: skip
    assert await _enrolments(actions_db, "e") == [("win_back", "exited", "goal:purchase")]


async def test_win_back_ends_when_a_late_event_withdraws_the_at_risk_that_began_it(
    pool: Pool, actions_db: str
) -> None:
    # A purchase dated before the at-risk change arrives late: the scorer withdraws the
    # change (at_risk -> established, dated earlier). No goal counts (the purchase is older
    # than the trigger); the change itself ends the sequence.
    await apply_changes(pool, [tier_change("4", "f", "lifecycle_stage", "established",
                                           "at_risk", at=NOW)], now=NOW)  # fmt: skip
    back = tier_change("5", "f", "lifecycle_stage", "at_risk", "established", at=NOW - DAY)
    await apply_changes(pool, [back], now=NOW + DAY)
    assert await _enrolments(actions_db, "f") == [
        ("win_back", "exited", "lifecycle_stage:established")
    ]


async def test_a_batch_names_the_changes_it_had_already_applied(pool: Pool) -> None:
    change = tier_change("r1", "cust", "value_tier", "silver", "gold")
    planned = PlannedChange(change, plan_actions(change, BOOKS))

    async def apply(*changes: PlannedChange) -> tuple[int, list[str]]:
        result = await apply_batch(pool, changes, [], [], group_id="g", playbooks=BOOKS,
                                   channels=LOG_ONLY, now=NOW)  # fmt: skip
        return result.fresh, result.redelivered

    assert await apply(planned, planned) == (1, ["r1"])  # twice within one batch
    assert await apply(planned) == (0, ["r1"])  # again in a later batch


async def test_a_purchase_on_another_process_during_the_enrolment_still_ends_win_back(
    pool: Pool, actions_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tier changes and purchases are different topics: a group may give the customer's two
    # partitions to two processes, whose transactions then overlap.
    change = tier_change("c1", "cust", "lifecycle_stage", "established", "at_risk", at=NOW)
    inside, release = asyncio.Event(), asyncio.Event()
    advance = store.advance_offsets

    async def held_open(conn: Connection, group_id: str, moves: list[OffsetMove]) -> None:
        if group_id == "changes":  # the enrolment is written, not yet committed
            inside.set()
            await release.wait()
        await advance(conn, group_id, moves)

    monkeypatch.setattr(store, "advance_offsets", held_open)
    enrolling = asyncio.create_task(
        apply_batch(pool, [PlannedChange(change, plan_actions(change, BOOKS))], [], [],
                    group_id="changes", playbooks=BOOKS, channels=LOG_ONLY, now=NOW)
    )  # fmt: skip
    await inside.wait()
    bought = asyncio.create_task(
        apply_batch(pool, [], [GoalHit("cust", NOW + DAY / 24)], [], group_id="purchases",
                    playbooks=BOOKS, channels=LOG_ONLY, now=NOW + DAY / 24)
    )  # fmt: skip
    await _until_waiting_for_a_lock(actions_db)
    release.set()
    await asyncio.gather(enrolling, bought)
    assert ("win_back", "exited", "goal:purchase") in await _enrolments(actions_db, "cust")
    steps = await fetch(actions_db, "SELECT status FROM actions.delivery WHERE kind = 'step'")
    assert steps and {s["status"] for s in steps} == {"cancelled"}


async def _until_waiting_for_a_lock(database_url: str) -> None:
    for _ in range(500):
        if await fetch(database_url, "SELECT 1 FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the purchase's batch never waited for the change's")


async def test_enrolments_in_a_sequence_removed_from_the_playbooks_exit_at_start(
    pool: Pool, actions_db: str
) -> None:
    # Exits are planned from the playbooks loaded now: such an enrolment never exited and
    # its steps went out to a customer who had bought again long before.
    await apply_changes(pool, [tier_change("r", "w", "lifecycle_stage", "established",
                                           "at_risk")], now=NOW)  # fmt: skip
    await apply_changes(pool, [tier_change("v", "v", "value_tier", "silver", "gold")], now=NOW)
    kept = {name: s for name, s in BOOKS.sequences.items() if name != "win_back"}
    registry = new_registry()
    parts = Parts(
        ActionsSettings(), pool, BOOKS.model_copy(update={"sequences": kept}),
        FixedClock(NOW + DAY), actions_metrics(registry), BrokerCheck(within=1), make_tracer("t"),
    )  # fmt: skip
    await _end_removed_sequences(parts)
    assert await _enrolments(actions_db, "w") == [("win_back", "exited", "sequence_removed")]
    assert await _enrolments(actions_db, "v") == [("vip_welcome", "active", None)]
    steps = await fetch(actions_db, "SELECT status FROM actions.delivery WHERE kind = 'step'"
                        " AND customer_id = 'w'")  # fmt: skip
    assert {s["status"] for s in steps} == {"cancelled"}
    cancelled = registry.get_sample_value(
        "tierstream_actions_sequence_steps_total", {"sequence": "win_back", "outcome": "cancelled"}
    )
    assert cancelled == len(steps) > 0


@pytest.mark.parametrize("one_batch", [False, True], ids=["later_batch", "same_batch"])
async def test_a_change_older_than_one_applied_is_recorded_and_not_acted_on(
    pool: Pool, actions_db: str, one_batch: bool
) -> None:
    # Replayed, or the customer moved to another partition: the older change came after
    # the newer one and was acted on as current (a silver customer got the VIP welcome).
    newer = tier_change("down", "s", "value_tier", "gold", "silver", at=NOW)
    older = tier_change("up", "s", "value_tier", "silver", "gold", at=NOW - DAY)
    other = tier_change("life", "s", "lifecycle_stage", "established", "at_risk", at=NOW - DAY)
    if one_batch:
        result = await apply_changes(pool, [newer, older, other], now=NOW, seqs=[20, 10, 5])
    else:
        await apply_changes(pool, [newer], now=NOW, seqs=[20])
        result = await apply_changes(pool, [older, other], now=NOW, seqs=[10, 5])
    assert result.stale == ["up"]
    assert await _enrolments(actions_db, "s", "vip_welcome") == []
    tasks = await fetch(actions_db, "SELECT playbook FROM actions.task WHERE customer_id = 's'")
    assert "gold_upgrade" not in {t["playbook"] for t in tasks}
    assert await _enrolments(actions_db, "s", "win_back") == [("win_back", "active", None)]
    inbox = await fetch(actions_db, "SELECT 1 FROM actions.inbox WHERE message_id LIKE '%:up'")
    assert len(inbox) == 1  # recorded: a redelivery of it is a duplicate


async def test_a_late_events_withdrawal_dated_earlier_is_current_by_its_seq(
    pool: Pool, actions_db: str
) -> None:
    # The scorer withdraws an at-risk change when a late purchase predates it: the
    # withdrawal is dated earlier but comes later. Times cannot order them; the seq does.
    enrol = tier_change("risk", "r", "lifecycle_stage", "established", "at_risk", at=NOW)
    await apply_changes(pool, [enrol], now=NOW, seqs=[7])
    back = tier_change("back", "r", "lifecycle_stage", "at_risk", "established", at=NOW - DAY)
    result = await apply_changes(pool, [back], now=NOW + DAY, seqs=[8])
    assert result.stale == []
    assert await _enrolments(actions_db, "r", "win_back") == [
        ("win_back", "exited", "lifecycle_stage:established")
    ]
    old_exit = tier_change("old", "r", "lifecycle_stage", "at_risk", "established", at=NOW)
    again = tier_change("again", "r", "lifecycle_stage", "established", "at_risk", at=NOW)
    await apply_changes(pool, [again], now=NOW + DAY, seqs=[9])
    result = await apply_changes(pool, [old_exit], now=NOW + DAY, seqs=[6])  # replayed
    assert result.stale == ["old"]
    assert ("win_back", "active", None) in await _enrolments(actions_db, "r", "win_back")


async def test_the_latest_change_read_again_after_its_inbox_row_was_pruned_is_not_acted_on(
    pool: Pool, actions_db: str
) -> None:
    # A re-read of the topic past the inbox's retention enrolled and mailed every customer
    # again for its latest change: its seq equals the one applied, it is no newer.
    gold = tier_change("g1", "p", "value_tier", "silver", "gold")
    await apply_changes(pool, [gold], now=NOW, seqs=[4])
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM actions.inbox")  # what retention does after 30 days
    result = await apply_changes(pool, [gold], now=NOW + DAY, seqs=[4])
    assert result.stale == ["g1"]
    assert await _enrolments(actions_db, "p", "vip_welcome") == [("vip_welcome", "active", None)]
