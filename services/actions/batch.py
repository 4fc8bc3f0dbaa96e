"""One consumed batch, applied in one Postgres transaction (the effectively-once unit).

Order inside the transaction: inbox claim (redeliveries drop out), the advisory locks of
the batch's customers (another process may hold their purchases), enrolments that began
and ended within the batch before any exit of their sequence, enrolment exits, those that
began after such an exit (both stored as history), new enrolments with their steps, tasks,
alert and task-push deliveries, goal events (which may end enrolments created just before),
and last the fenced offset update.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.actions import store
from services.actions.db import Connection, Pool
from services.actions.effects import (
    ChannelConfig,
    DeliveryRow,
    Effects,
    EndedRow,
    collect_effects,
    step_rows,
    task_push_row,
)
from services.actions.store import ChangeKey
from shared.contracts import TierChanged
from shared.domain.playbooks import (
    ActionFailure,
    ActionRequest,
    Plan,
    Playbooks,
    plan_goal_exits,
)
from shared.offsets import OffsetMove

GOAL_PURCHASE = "purchase"


@dataclass(frozen=True)
class PlannedChange:
    """A decoded tier change and what its playbooks call for (planned before the transaction)."""

    change: TierChanged
    plan: Plan
    # The scorer's `seq` of the change (header CHANGE_SEQ_HEADER; None: not given), which
    # grows with each of a customer's changes.
    seq: int | None = None

    @property
    def requests(self) -> list[ActionRequest]:
        return self.plan.requests

    @property
    def message_id(self) -> str:
        return f"tier-changed:{self.change.id}"


@dataclass(frozen=True)
class GoalHit:
    """A goal event (a purchase) of a customer at an event time."""

    customer_id: str
    occurred_at: datetime
    event_id: str | None = None


@dataclass
class BatchResult:
    """What a committed batch did, for the metrics."""

    fresh: int = 0
    duplicates: int = 0
    redelivered: list[str] = field(default_factory=list)  # tier change ids already applied
    # Ids of changes older (by seq) than one of the same customer and dimension applied
    # before them (replayed, or moved to another partition): recorded, not acted on.
    stale: list[str] = field(default_factory=list)
    planned: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Actions of fresh changes whose templates failed, with the id of their change.
    failed: list[tuple[str, ActionFailure]] = field(default_factory=list)
    enrolled: Counter[str] = field(default_factory=Counter)
    cancelled_steps: Counter[str] = field(default_factory=Counter)
    # Enrolments asked for but not made, by (sequence, reason): re-entry policy, goal
    # already reached, or one of the sequence already active.
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)


async def apply_batch(
    pool: Pool,
    changes: Sequence[PlannedChange],
    goals: Sequence[GoalHit],
    moves: Sequence[OffsetMove],
    *,
    group_id: str,
    playbooks: Playbooks,
    channels: ChannelConfig,
    now: datetime,
) -> BatchResult:
    """Write every effect of the batch and advance the offsets: all or nothing.

    Raises `shared.offsets.Fenced` (and rolls back) when another consumer owns a partition.
    """
    first_seen: dict[str, PlannedChange] = {}
    for planned in changes:  # a record redelivered within one batch counts once, in order
        first_seen.setdefault(planned.message_id, planned)
    unique = list(first_seen.values())
    result = BatchResult()
    async with pool.acquire() as conn, conn.transaction():
        claimed = (
            await store.claim_messages(conn, [c.message_id for c in unique]) if unique else set()
        )
        fresh = [c for c in unique if c.message_id in claimed]
        await store.lock_customers(
            conn, [c.change.customer_id for c in fresh] + [g.customer_id for g in goals]
        )
        before = await store.latest_changes(conn, newest_seqs(fresh))
        current, stale = split_stale(fresh, before)
        effects = collect_effects(((c.change, c.requests) for c in current), channels, now=now)
        await _write_effects(conn, effects, channels, result, now=now)
        result.cancelled_steps += await _record_goals(conn, goals, playbooks, now=now)
        await store.advance_offsets(conn, group_id, moves)
    result.fresh, result.duplicates = len(current), len(changes) - len(fresh)
    result.stale = [c.change.id for c in stale]
    result.redelivered = _redelivered(changes, claimed)
    result.planned = effects.planned
    result.failed = [(c.change.id, failure) for c in current for failure in c.plan.failures]
    return result


def _change_key(change: TierChanged) -> ChangeKey:
    return (change.customer_id, change.dimension.value)


def newest_seqs(changes: Sequence[PlannedChange]) -> dict[ChangeKey, int]:
    """The highest seq per customer and dimension among `changes` (those that carry one)."""
    newest: dict[ChangeKey, int] = {}
    for planned in changes:
        if planned.seq is not None:
            key = _change_key(planned.change)
            newest[key] = max(newest.get(key, planned.seq), planned.seq)
    return newest


def split_stale(
    changes: Sequence[PlannedChange], before: Mapping[ChangeKey, int]
) -> tuple[list[PlannedChange], list[PlannedChange]]:
    """The changes to act on, in order, and those older than one of the same customer and
    dimension applied before them (its seq in `before`, or earlier in `changes`).

    The scorer publishes a customer's changes in order on one partition; a replay, or a
    customer moved to another partition, can bring an older one after a newer one. Their
    times cannot tell: a late event's change is dated before one published ahead of it.
    The seq already applied is stale too: a seq is one change's, read again once its inbox
    row was pruned (a re-read of the topic acted again on every customer's latest change).
    A change without a seq (an older scorer's) is never stale.
    """
    latest = dict(before)
    current: list[PlannedChange] = []
    stale: list[PlannedChange] = []
    for planned in changes:
        key, seq = _change_key(planned.change), planned.seq
        seen = latest.get(key)
        if seq is not None and seen is not None and seq <= seen:
            stale.append(planned)
            continue
        if seq is not None:
            latest[key] = seq
        current.append(planned)
    return current, stale


def _redelivered(changes: Sequence[PlannedChange], claimed: set[str]) -> list[str]:
    """Ids of the changes applied before, or a second time within this batch."""
    first: set[str] = set()
    out = []
    for planned in changes:
        if planned.message_id in claimed and planned.message_id not in first:
            first.add(planned.message_id)
        else:
            out.append(planned.change.id)
    return out


async def _write_effects(
    conn: Connection, effects: Effects, channels: ChannelConfig, result: BatchResult, *,
    now: datetime,
) -> None:  # fmt: skip
    """Exits, then enrolments (with their steps), tasks and deliveries."""
    ended = await _exit_enrolments(conn, effects, result, now=now)
    chosen = await store.first_admissible(
        conn, list(effects.enrols.values()), now=now, refused=result.refused
    )
    allowed = [row for row in chosen if row is not None]
    enrolled = await store.insert_enrolments(conn, allowed, now=now)
    started = Counter(row.request.sequence for _, row in enrolled)
    for sequence, n in (Counter(row.request.sequence for row in allowed) - started).items():
        result.refused[(sequence, "already_active")] += n
    steps = [s for eid, row in enrolled for s in step_rows(eid, row, channels)]
    created = await store.upsert_tasks(conn, list(effects.tasks.values()), now=now)
    pushes = [task_push_row(t, now=now) for t in created] if channels.crm else []
    deliveries: list[DeliveryRow] = [*effects.alerts, *pushes, *steps]
    await store.insert_deliveries(conn, deliveries, now=now)
    result.enrolled = Counter(e.row.request.sequence for e in ended)
    result.enrolled += started


async def _exit_enrolments(
    conn: Connection, effects: Effects, result: BatchResult, *, now: datetime
) -> list[EndedRow]:
    """The exits, with the enrolments that began and ended within the batch (returned).

    Those are stored as ended where one change at a time would have admitted them, so the
    re-entry policy reads them as it would then. One that began before any exit of its
    sequence is stored before the exits: an enrolment active since an earlier batch refuses
    it. One that began after such an exit is stored after the exits, which end the active
    one first. Their steps are never stored (none could be sent), but they count as one
    change at a time would: the enrolment started, its steps cancelled.
    """
    before = [e for e in effects.ended if not e.after_exit]
    ended = await _store_ended(conn, before, now=now, refused=result.refused)
    result.cancelled_steps += await store.end_enrolments(conn, effects.exits, now=now)
    after = [e for e in effects.ended if e.after_exit]
    ended += await _store_ended(conn, after, now=now, refused=result.refused)
    for e in ended:
        result.cancelled_steps[e.row.request.sequence] += len(e.row.request.steps)
    return ended


async def _store_ended(
    conn: Connection, ended: Sequence[EndedRow], *, now: datetime,
    refused: Counter[tuple[str, str]],
) -> list[EndedRow]:  # fmt: skip
    """Store the begun-and-ended enrolments the re-entry policy admits, in rounds of one per
    customer and sequence, so each reads the history of the one before it; returns them."""
    stored: list[EndedRow] = []
    for group in _rounds(ended):
        chosen = await store.first_admissible(
            conn, [e.candidates() for e in group], now=now, refused=refused
        )
        admitted = [replace(e, row=row, alternates=()) for e, row in zip(group, chosen, strict=True)
                    if row is not None]  # fmt: skip
        stored += await store.insert_ended_enrolments(conn, admitted, now=now)
    return stored


def _rounds(ended: Sequence[EndedRow]) -> list[list[EndedRow]]:
    """The n-th enrolment of each customer and sequence, in batch order, in the n-th round."""
    rounds: list[list[EndedRow]] = []
    seen: Counter[tuple[str, str]] = Counter()
    for e in ended:
        key = (e.row.customer_id, e.row.request.sequence)
        if seen[key] == len(rounds):
            rounds.append([])
        rounds[seen[key]].append(e)
        seen[key] += 1
    return rounds


async def _record_goals(
    conn: Connection, goals: Sequence[GoalHit], playbooks: Playbooks, *, now: datetime
) -> Counter[str]:
    if not goals:
        return Counter()
    latest: dict[str, datetime] = {}
    for hit in goals:
        if hit.customer_id not in latest or hit.occurred_at > latest[hit.customer_id]:
            latest[hit.customer_id] = hit.occurred_at
    sequences = [e.sequence for e in plan_goal_exits(GOAL_PURCHASE, playbooks)]
    return await store.record_goals(conn, GOAL_PURCHASE, latest, sequences, now=now)
