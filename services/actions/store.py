"""SQL of the consumer's write path: inbox, offsets, tasks, enrolments, deliveries, goals.

Every function runs bulk statements (`unnest` of arrays) on a connection inside the
caller's transaction; none makes a round trip per record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.actions.db import Connection, row_count
from services.actions.effects import DeliveryRow, EndedRow, EnrolRow, ExitRow, TaskRow
from shared import offsets
from shared.domain.playbooks import Reentry
from shared.offsets import OffsetMove


async def claim_messages(conn: Connection, message_ids: Sequence[str]) -> set[str]:
    """Insert ids into the inbox; returns those not seen before (redeliveries drop out)."""
    rows = await conn.fetch(
        "INSERT INTO actions.inbox (message_id) SELECT m FROM unnest($1::text[]) AS m ORDER BY m"
        " ON CONFLICT DO NOTHING RETURNING message_id",
        sorted(set(message_ids)),
    )
    return {row["message_id"] for row in rows}


async def lock_customers(conn: Connection, customer_ids: Sequence[str]) -> None:
    """Hold each customer's advisory lock until the transaction ends, in one sorted order.

    A customer's tier changes and purchases sit on different topics, whose partitions a
    group may give to different processes. Without the lock, a change's enrolment and a
    purchase's goal, committed side by side, each miss the other: win-back would keep
    going after the customer bought again. Sorted, two batches cannot deadlock on them.
    """
    if customer_ids:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(c, 0))"
            " FROM unnest($1::text[]) WITH ORDINALITY AS x(c, n) ORDER BY n",
            sorted(set(customer_ids)),
        )


ChangeKey = tuple[str, str]  # customer, dimension


async def latest_changes(conn: Connection, newest: dict[ChangeKey, int]) -> dict[ChangeKey, int]:
    """Store the batch's highest change seq per customer and dimension (where it is higher)
    and return the seqs stored before the batch, in one statement (the caller holds the
    customers' locks). Every sub-statement sees the table as it was: `before` reads the old
    seqs, not the upsert's."""
    if not newest:
        return {}
    keys = sorted(newest)
    rows = await conn.fetch(
        "WITH batch AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])"
        " AS b(customer_id, dimension, seq)),"
        " before AS (SELECT l.* FROM actions.latest_change l JOIN batch b"
        " USING (customer_id, dimension)),"
        " stored AS (INSERT INTO actions.latest_change AS l SELECT * FROM batch"
        " ORDER BY customer_id, dimension"
        " ON CONFLICT (customer_id, dimension) DO UPDATE SET seq = EXCLUDED.seq"
        " WHERE EXCLUDED.seq > l.seq)"
        " SELECT customer_id, dimension, seq FROM before",
        [k[0] for k in keys], [k[1] for k in keys], [newest[k] for k in keys],
    )  # fmt: skip
    return {(r["customer_id"], r["dimension"]): r["seq"] for r in rows}


async def advance_offsets(conn: Connection, group_id: str, moves: Sequence[OffsetMove]) -> None:
    """Fenced offset update in this service's schema (see shared/offsets.py)."""
    await offsets.advance_offsets(conn, "actions", group_id, moves)


_CANCEL_STEPS = """
, cancelled AS (
    UPDATE actions.delivery d SET status = 'cancelled'
    FROM ended WHERE d.enrolment_id = ended.id AND d.status = 'pending'
    RETURNING ended.sequence)
SELECT sequence, count(*) AS n FROM cancelled GROUP BY sequence
"""


async def end_enrolments(
    conn: Connection, exits: Sequence[ExitRow], *, now: datetime
) -> Counter[str]:
    """Exit the active enrolments named; returns cancelled steps per sequence.

    An enrolment is ended by the first exit of its sequence in the batch (with its reason),
    as one change at a time: a later one ends an enrolment begun within the batch.
    """
    if not exits:
        return Counter()
    unique: dict[tuple[str, str], ExitRow] = {}
    for e in exits:
        unique.setdefault((e.customer_id, e.sequence), e)
    rows = sorted(unique.values(), key=lambda e: (e.customer_id, e.sequence))
    result = await conn.fetch(
        "WITH ended AS (UPDATE actions.enrolment e"
        " SET status = 'exited', exit_reason = x.reason, ended_at = $4"
        " FROM unnest($1::text[], $2::text[], $3::text[]) AS x(customer_id, sequence, reason)"
        " WHERE e.status = 'active' AND e.customer_id = x.customer_id AND e.sequence = x.sequence"
        " RETURNING e.id, e.sequence)" + _CANCEL_STEPS,
        [r.customer_id for r in rows], [r.sequence for r in rows], [r.reason for r in rows], now,
    )  # fmt: skip
    return Counter({row["sequence"]: row["n"] for row in result})


async def end_removed_sequences(
    conn: Connection, sequences: Sequence[str], *, now: datetime
) -> dict[str, tuple[int, int]]:
    """Exit the active enrolments of sequences the playbooks no longer define (reason
    `sequence_removed`), cancelling their pending steps; (enrolments, steps) per sequence.

    Exits are planned from the playbooks loaded now: such an enrolment could never exit,
    and its steps would go to a customer who had long met the sequence's goal.
    """
    rows = await conn.fetch(
        "WITH ended AS (UPDATE actions.enrolment e"
        " SET status = 'exited', exit_reason = 'sequence_removed', ended_at = $2"
        " WHERE e.status = 'active' AND NOT e.sequence = ANY($1::text[])"
        " RETURNING e.id, e.sequence),"
        " cancelled AS (UPDATE actions.delivery d SET status = 'cancelled'"
        " FROM ended WHERE d.enrolment_id = ended.id AND d.status = 'pending'"
        " RETURNING ended.sequence)"
        " SELECT sequence, (SELECT count(*) FROM ended x WHERE x.sequence = s.sequence) AS n,"
        " (SELECT count(*) FROM cancelled c WHERE c.sequence = s.sequence) AS steps"
        " FROM (SELECT DISTINCT sequence FROM ended) AS s",
        list(sequences), now,
    )  # fmt: skip
    return {row["sequence"]: (row["n"], row["steps"]) for row in rows}


# When a goal event (e.g. a purchase) counts against an enrolment: only strictly after the
# change that triggered it, both by event time. At the same instant it is, as far as times
# can tell, the event the change was decided on: an old purchase that made a customer
# at_risk (a history import, a late event) is the reason to win them back, not a return.
# `goal_reached` decides enrolments, `_GOAL_REACHED` (the same test in SQL) exits them.
def goal_reached(goal_at: datetime, trigger_at: datetime) -> bool:
    """Whether a goal event at `goal_at` reaches the goal of an enrolment triggered at
    `trigger_at` (the change's event time)."""
    return goal_at > trigger_at


_GOAL_REACHED = "h.at > e.trigger_at"  # `goal_reached(h.at, e.trigger_at)`


async def record_goals(
    conn: Connection, event_type: str, hits: dict[str, datetime], sequences: Sequence[str],
    *, now: datetime,
) -> Counter[str]:  # fmt: skip
    """Remember each customer's latest goal event and exit the enrolments it ends.

    Only enrolments triggered before the goal event end (`goal_reached`): a purchase that
    predates the change that enrolled the customer, or is the one it was decided on, does
    not count as "bought again".
    """
    customers = sorted(hits)
    times = [hits[c] for c in customers]
    await conn.execute(
        "INSERT INTO actions.goal_event AS g (customer_id, event_type, last_at)"
        " SELECT c, $3, t FROM unnest($1::text[], $2::timestamptz[]) AS h(c, t)"
        " ON CONFLICT (customer_id, event_type)"
        " DO UPDATE SET last_at = GREATEST(g.last_at, EXCLUDED.last_at)",
        customers, times, event_type,
    )  # fmt: skip
    if not sequences:
        return Counter()
    result = await conn.fetch(
        "WITH ended AS (UPDATE actions.enrolment e"
        " SET status = 'exited', exit_reason = $4, ended_at = $5"
        " FROM unnest($1::text[], $2::timestamptz[]) AS h(customer_id, at)"
        " WHERE e.status = 'active' AND e.customer_id = h.customer_id"
        f" AND e.sequence = ANY($3::text[]) AND {_GOAL_REACHED}"
        " RETURNING e.id, e.sequence)" + _CANCEL_STEPS,
        customers, times, list(sequences), f"goal:{event_type}", now,
    )  # fmt: skip
    return Counter({row["sequence"]: row["n"] for row in result})


async def first_admissible(
    conn: Connection,
    candidates: Sequence[Sequence[EnrolRow]],
    *,
    now: datetime,
    refused: Counter[tuple[str, str]] | None = None,
) -> list[EnrolRow | None]:
    """Per group (one customer and sequence, requests in order), the first request the
    re-entry policy and already-reached goals allow, or None; a group none of whose requests
    is allowed is counted in `refused` by (sequence, its first request's reason)."""
    enrols = [e for group in candidates for e in group]
    if not enrols:
        return [None for _ in candidates]
    rows = await conn.fetch(
        "SELECT customer_id, sequence, max(coalesce(ended_at, enrolled_at)) AS last_end,"
        " bool_or(status = 'active') AS active FROM actions.enrolment"
        " WHERE (customer_id, sequence) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        " GROUP BY 1, 2",
        [e.customer_id for e in enrols],
        [e.request.sequence for e in enrols],
    )
    history = {(r["customer_id"], r["sequence"]): r["last_end"] for r in rows}
    active = {(r["customer_id"], r["sequence"]) for r in rows if r["active"]}
    goals = {
        (r["customer_id"], r["event_type"]): r["last_at"]
        for r in await conn.fetch(
            "SELECT customer_id, event_type, last_at FROM actions.goal_event"
            " WHERE customer_id = ANY($1::text[])",
            sorted({e.customer_id for e in enrols}),
        )
    }
    chosen: list[EnrolRow | None] = []
    for group in candidates:
        reasons = [_refusal(e, history, goals, now, active) for e in group]
        admitted = next((e for e, why in zip(group, reasons, strict=True) if why is None), None)
        chosen.append(admitted)
        if admitted is None and group and refused is not None:
            refused[(group[0].request.sequence, str(reasons[0]))] += 1
    return chosen


def _refusal(
    enrol: EnrolRow, history: dict[tuple[str, str], datetime],
    goals: dict[tuple[str, str], datetime], now: datetime, active: set[tuple[str, str]],
) -> str | None:  # fmt: skip
    """Why the enrolment is not made (a `REFUSALS` reason), None when it is allowed."""
    request = enrol.request
    if (enrol.customer_id, request.sequence) in active:
        return "already_active"  # one at a time (the insert would skip it anyway)
    last = history.get((enrol.customer_id, request.sequence))
    if last is not None and request.reentry is Reentry.NEVER:
        return "reentry_never"
    if last is not None and request.reentry_after and last + request.reentry_after > now:
        return "reentry_cooldown"
    # The goal was reached after the triggering change (e.g. bought again): nothing to win back.
    reached = [goals.get((enrol.customer_id, g)) for g in request.goal_events]
    if any(at is not None and goal_reached(at, enrol.trigger_at) for at in reached):
        return "goal_reached"
    return None


async def insert_enrolments(
    conn: Connection, enrols: Sequence[EnrolRow], *, now: datetime
) -> list[tuple[int, EnrolRow]]:
    """Create enrolments; an active one of the same customer and sequence wins (no duplicate)."""
    if not enrols:
        return []
    ordered = sorted(enrols, key=lambda e: (e.customer_id, e.request.sequence))
    rows = await conn.fetch(
        "INSERT INTO actions.enrolment"
        " (customer_id, sequence, playbook, tier_change_id, trigger_at, enrolled_at)"
        " SELECT c, s, p, t, a, $6 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        " $5::timestamptz[]) AS x(c, s, p, t, a)"
        " ON CONFLICT (customer_id, sequence) WHERE status = 'active' DO NOTHING"
        " RETURNING id, customer_id, sequence",
        [e.customer_id for e in ordered], [e.request.sequence for e in ordered],
        [e.request.playbook for e in ordered], [e.tier_change_id for e in ordered],
        [e.trigger_at for e in ordered], now,
    )  # fmt: skip
    by_key = {(e.customer_id, e.request.sequence): e for e in ordered}
    return [(row["id"], by_key[(row["customer_id"], row["sequence"])]) for row in rows]


async def insert_ended_enrolments(
    conn: Connection, ended: Sequence[EndedRow], *, now: datetime
) -> list[EndedRow]:
    """Record enrolments that began and ended within one batch (one per customer and
    sequence): exited, with no steps; not where one is active (it would have refused them).
    Returns those recorded."""
    if not ended:
        return []
    ordered = sorted(ended, key=lambda e: (e.row.customer_id, e.row.request.sequence))
    rows = [e.row for e in ordered]
    result = await conn.fetch(
        "INSERT INTO actions.enrolment (customer_id, sequence, playbook, tier_change_id,"
        " trigger_at, enrolled_at, status, exit_reason, ended_at)"
        " SELECT c, s, p, t, a, $7, 'exited', r, $7 FROM unnest($1::text[], $2::text[],"
        " $3::text[], $4::text[], $5::timestamptz[], $6::text[]) AS x(c, s, p, t, a, r)"
        " WHERE NOT EXISTS (SELECT 1 FROM actions.enrolment e"
        " WHERE e.customer_id = x.c AND e.sequence = x.s AND e.status = 'active')"
        " RETURNING customer_id, sequence",
        [r.customer_id for r in rows], [r.request.sequence for r in rows],
        [r.request.playbook for r in rows], [r.tier_change_id for r in rows],
        [r.trigger_at for r in rows], [e.reason for e in ordered], now,
    )  # fmt: skip
    by_key = {(e.row.customer_id, e.row.request.sequence): e for e in ordered}
    return [by_key[row["customer_id"], row["sequence"]] for row in result]


# A task as the API shows it, the CRM push carries it and its ETag digests it.
TASK_COLUMNS = (
    "id, customer_id, tier_change_id, playbook, title, queue, assignee, priority, status,"
    " due_at, created_at, updated_at, completed_at"
)
TASK_COLUMN_NAMES = tuple(name.strip() for name in TASK_COLUMNS.split(","))


async def upsert_tasks(
    conn: Connection, tasks: Sequence[TaskRow], *, now: datetime
) -> list[dict[str, Any]]:
    """Open tasks; an open task of the same customer and playbook is refreshed instead.

    Returns the tasks created (not the refreshed ones), for the CRM push. A refresh keeps
    the earlier due time: a new trigger must not hide an SLA that is already running. A row
    stands for `triggers` changes of the batch (`TaskRow.refreshed` merged them the same way).
    """
    if not tasks:
        return []
    rows = sorted(tasks, key=lambda t: (t.customer_id, t.playbook))
    result = await conn.fetch(
        "INSERT INTO actions.task AS t (customer_id, tier_change_id, playbook, title, queue,"
        " priority, assignee, due_at, triggers, created_at, updated_at)"
        " SELECT c, ch, p, ti, q, pr, a, d, n, $10, $10 FROM unnest($1::text[], $2::text[],"
        " $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],"
        " $9::int[]) AS x(c, ch, p, ti, q, pr, a, d, n)"
        " ON CONFLICT (customer_id, playbook) WHERE status = 'open' DO UPDATE SET"
        " tier_change_id = EXCLUDED.tier_change_id, title = EXCLUDED.title,"
        " queue = EXCLUDED.queue, priority = EXCLUDED.priority,"
        " assignee = COALESCE(t.assignee, EXCLUDED.assignee),"
        " due_at = LEAST(t.due_at, EXCLUDED.due_at), updated_at = EXCLUDED.updated_at,"
        f" triggers = t.triggers + EXCLUDED.triggers RETURNING {TASK_COLUMNS},"
        " (xmax = 0) AS created",
        [r.customer_id for r in rows], [r.tier_change_id for r in rows],
        [r.playbook for r in rows], [r.title for r in rows], [r.queue for r in rows],
        [r.priority for r in rows], [r.assignee for r in rows], [r.due_at for r in rows],
        [r.triggers for r in rows], now,
    )  # fmt: skip
    return [task_json(row) for row in result if row["created"]]


def task_json(row: Any) -> dict[str, Any]:
    """A task row as the CRM push carries it (times as ISO text)."""
    out = {k: row[k] for k in TASK_COLUMN_NAMES}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


async def insert_deliveries(conn: Connection, rows: Sequence[DeliveryRow], *, now: datetime) -> int:
    """Queue deliveries; a key already queued is not queued twice."""
    if not rows:
        return 0
    cols = [
        [r.key for r in rows], [r.kind for r in rows], [r.customer_id for r in rows],
        [r.tier_change_id for r in rows], [r.playbook for r in rows], [r.audience for r in rows],
        [r.enrolment_id for r in rows], [r.step_index for r in rows], [r.step_name for r in rows],
        [r.channel for r in rows], [r.recipient for r in rows], [r.subject for r in rows],
        [r.body for r in rows], [r.payload for r in rows], [r.due_at for r in rows],
    ]  # fmt: skip
    status = await conn.execute(
        "INSERT INTO actions.delivery (idempotency_key, kind, customer_id, tier_change_id,"
        " playbook, audience, enrolment_id, step_index, step_name, channel, recipient, subject,"
        " body, payload, due_at, created_at)"
        " SELECT *, $16 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::text[], $7::int8[], $8::int[], $9::text[], $10::text[], $11::text[], $12::text[],"
        " $13::text[], $14::jsonb[], $15::timestamptz[])"
        " ON CONFLICT (idempotency_key) DO NOTHING",
        *cols, now,
    )  # fmt: skip
    return row_count(status)
