"""One consumed batch, applied in one Postgres transaction (the effectively-once unit).

Order inside the transaction: inbox claim (redeliveries drop out), the advisory locks of
the batch's customers (another process may hold their purchases), enrolments that began
and ended within the batch (stored as history), enrolment exits, new
enrolments with their steps, tasks, alert and task-push deliveries, goal events (which may
end enrolments created just before), and last the fenced offset update.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.actions import store
from services.actions.db import Connection, Pool
from services.actions.effects import (
    ChannelConfig,
    DeliveryRow,
    Effects,
    collect_effects,
    step_rows,
    task_push_row,
)
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
    planned: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Actions of fresh changes whose templates failed, with the id of their change.
    failed: list[tuple[str, ActionFailure]] = field(default_factory=list)
    enrolled: Counter[str] = field(default_factory=Counter)
    cancelled_steps: Counter[str] = field(default_factory=Counter)


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
        effects = collect_effects(((c.change, c.requests) for c in fresh), channels, now=now)
        await _write_effects(conn, effects, channels, result, now=now)
        result.cancelled_steps += await _record_goals(conn, goals, playbooks, now=now)
        await store.advance_offsets(conn, group_id, moves)
    result.fresh, result.duplicates = len(fresh), len(changes) - len(fresh)
    result.redelivered = _redelivered(changes, claimed)
    result.planned = effects.planned
    result.failed = [(c.change.id, failure) for c in fresh for failure in c.plan.failures]
    return result


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
    """Exits, then enrolments (with their steps), tasks and deliveries.

    Enrolments that began and ended within the batch are stored as ended first (unless one
    was active already, which would have refused them), so the re-entry policy reads them as
    it would one change at a time.
    """
    ended = await store.admissible(conn, [row for row, _ in effects.ended.values()], now=now)
    await store.insert_ended_enrolments(
        conn, [effects.ended[row.customer_id, row.request.sequence] for row in ended], now=now
    )
    result.cancelled_steps += await store.end_enrolments(conn, effects.exits, now=now)
    allowed = await store.admissible(conn, list(effects.enrols.values()), now=now)
    enrolled = await store.insert_enrolments(conn, allowed, now=now)
    steps = [s for eid, row in enrolled for s in step_rows(eid, row, channels)]
    created = await store.upsert_tasks(conn, list(effects.tasks.values()), now=now)
    pushes = [task_push_row(t, now=now) for t in created] if channels.crm else []
    deliveries: list[DeliveryRow] = [*effects.alerts, *pushes, *steps]
    await store.insert_deliveries(conn, deliveries, now=now)
    result.enrolled = Counter(row.request.sequence for _, row in enrolled)


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
