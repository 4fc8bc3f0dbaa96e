"""SQL of the API (on the request's connection) and the gauges (on the pool): tasks,
enrolments with their steps, alerts, and putting dead deliveries back to be sent."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.actions import store
from services.actions.db import Connection, Pool
from services.actions.effects import task_push_row
from services.actions.store import TASK_COLUMN_NAMES, TASK_COLUMNS
from services.actions.tasks import DONE, TaskCommand, TaskStatus, next_status
from shared.pg import row_count

_STEP_STATUS = {"pending": "scheduled", "sent": "sent", "cancelled": "cancelled", "dead": "failed"}


@dataclass(frozen=True)
class TaskFilter:
    customer_id: str | None = None
    queue: str | None = None
    status: TaskStatus | None = None
    overdue: bool | None = None
    assignee: str | None = None
    priority: str | None = None


class _Where:
    """A WHERE clause built from optional conditions, every value a bind parameter."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *values: Any) -> None:
        """`sql` uses `{}` for each value, in order."""
        numbers = [f"${len(self.args) + i + 1}" for i in range(len(values))]
        self.parts.append(sql.format(*numbers))
        self.args.extend(values)

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""


async def list_tasks(
    conn: Connection, f: TaskFilter, *, now: datetime, after: int | None, limit: int
) -> list[dict[str, Any]]:
    """One page of tasks in id order (`limit` + 1 rows tell whether another page exists)."""
    where = _Where()
    for column, value in (
        ("customer_id", f.customer_id), ("queue", f.queue), ("status", f.status),
        ("assignee", f.assignee), ("priority", f.priority),
    ):  # fmt: skip
        if value is not None:
            where.add(f"{column} = {{}}", str(value))
    if f.overdue is not None:
        overdue = "(status = 'open' AND due_at < {})"
        where.add(overdue if f.overdue else f"NOT {overdue}", now)
    if after is not None:
        where.add("id > {}", after)
    sql = f"SELECT {TASK_COLUMNS} FROM actions.task{where.sql()} ORDER BY id LIMIT {limit + 1:d}"
    return [dict(r) for r in await conn.fetch(sql, *where.args)]


async def get_task(conn: Connection, task_id: int) -> dict[str, Any] | None:
    """One task, or None."""
    row = await conn.fetchrow(f"SELECT {TASK_COLUMNS} FROM actions.task WHERE id = $1", task_id)
    return dict(row) if row else None


class TransitionRefused(Exception):
    """The task is not in a state that allows the command."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class ChangedMeanwhile(Exception):
    """The task is no longer the version the caller's `If-Match` names."""

    def __init__(self, etag: str) -> None:
        super().__init__(etag)
        self.etag = etag


def task_etag(row: Mapping[str, Any] | asyncpg.Record) -> str:
    """The task's entity tag: a digest of its stored columns, so any change makes a new one."""
    text = "\x1f".join(str(row[column]) for column in TASK_COLUMN_NAMES)
    return f'"{hashlib.sha256(text.encode()).hexdigest()[:20]}"'


async def update_task(
    conn: Connection, task_id: int, command: TaskCommand, *, assignee: str | None, now: datetime,
    if_match: str | None = None, push: bool = False,
) -> dict[str, Any] | None:  # fmt: skip
    """Apply a command; None when unknown, TransitionRefused when the state forbids it,
    ChangedMeanwhile when `if_match` (an ETag, or `*`) is not the task's current one.
    `push`: queue the task as it is now for the CRM webhook, in the same transaction."""
    async with conn.transaction():
        current = await conn.fetchrow(
            f"SELECT {TASK_COLUMNS} FROM actions.task WHERE id = $1 FOR UPDATE", task_id
        )
        if current is None:
            return None
        etag = task_etag(current)
        if if_match is not None and if_match.strip() != "*" and etag not in _etags(if_match):
            raise ChangedMeanwhile(etag)
        status = next_status(TaskStatus(current["status"]), command)
        if status is None:
            raise TransitionRefused(current["status"])
        row = await conn.fetchrow(
            "UPDATE actions.task SET status = $2::text, assignee = COALESCE($3, assignee),"
            " updated_at = $4::timestamptz,"
            " completed_at = CASE WHEN $2::text = 'done' THEN $4::timestamptz END"
            f" WHERE id = $1 RETURNING {TASK_COLUMNS}",
            task_id, status.value, assignee, now,
        )  # fmt: skip
        if push and row is not None:
            pushed = task_push_row(store.task_json(row), now=now, event=DONE[command])
            await store.insert_deliveries(conn, [pushed], now=now)
    return dict(row) if row else None


def _etags(header: str) -> set[str]:
    """The entity tags of an If-Match header (a list; weak ones never match: RFC 9110)."""
    return {tag.strip() for tag in header.split(",") if tag.strip().startswith('"')}


async def list_enrolments(
    conn: Connection, customer_id: str | None, *, after: int | None, limit: int
) -> list[dict[str, Any]]:
    """One page of enrolments in id order, each with its steps."""
    where = _Where()
    if customer_id is not None:
        where.add("customer_id = {}", customer_id)
    if after is not None:
        where.add("id > {}", after)
    rows = await conn.fetch(
        "SELECT id, customer_id, sequence, playbook, tier_change_id, status, exit_reason,"
        f" enrolled_at, ended_at FROM actions.enrolment{where.sql()}"
        f" ORDER BY id LIMIT {limit + 1:d}",
        *where.args,
    )
    steps = await conn.fetch(
        "SELECT enrolment_id, step_index, step_name, channel, due_at, status, sent_at,"
        " attempts, last_error FROM actions.delivery WHERE enrolment_id = ANY($1::int8[])"
        " ORDER BY enrolment_id, step_index",
        [r["id"] for r in rows],
    )
    by_enrolment: dict[int, list[dict[str, Any]]] = {}
    for s in steps:
        by_enrolment.setdefault(s["enrolment_id"], []).append(_step(s))
    return [{**dict(r), "steps": by_enrolment.get(r["id"], [])} for r in rows]


def _step(row: Any) -> dict[str, Any]:
    return {
        "index": row["step_index"], "name": row["step_name"], "channel": row["channel"],
        "due_at": row["due_at"], "status": _STEP_STATUS[row["status"]], "sent_at": row["sent_at"],
        "attempts": row["attempts"], "last_error": row["last_error"],
    }  # fmt: skip


async def list_alerts(
    conn: Connection, customer_id: str | None, *, after: int | None, limit: int
) -> list[dict[str, Any]]:
    """One page of alert deliveries in id order."""
    where = _Where()
    where.add("kind = {}", "alert")
    if customer_id is not None:
        where.add("customer_id = {}", customer_id)
    if after is not None:
        where.add("id > {}", after)
    rows = await conn.fetch(
        "SELECT id, customer_id, tier_change_id, playbook, audience, channel, status,"
        " attempts, last_error, created_at, sent_at, idempotency_key FROM actions.delivery"
        f"{where.sql()} ORDER BY id LIMIT {limit + 1:d}",
        *where.args,
    )
    return [dict(r) for r in rows]


async def task_gauges(pool: Pool, *, now: datetime) -> list[tuple[str, int, int, int]]:
    """(queue, open, overdue, done late) for every queue with tasks."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT queue, count(*) FILTER (WHERE status = 'open') AS open,"
            " count(*) FILTER (WHERE status = 'open' AND due_at < $1) AS overdue,"
            " count(*) FILTER (WHERE status = 'done' AND completed_at > due_at) AS late"
            " FROM actions.task GROUP BY queue",
            now,
        )
    return [(r["queue"], r["open"], r["overdue"], r["late"]) for r in rows]


async def enrolment_gauges(pool: Pool) -> list[tuple[str, str, str | None, int]]:
    """(sequence, status, exit reason, count) of every enrolment."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT sequence, status, exit_reason, count(*) AS n FROM actions.enrolment"
            " GROUP BY 1, 2, 3"
        )
    return [(r["sequence"], r["status"], r["exit_reason"], r["n"]) for r in rows]


@dataclass(frozen=True)
class RequeueFilter:
    """Which dead deliveries to send again: one kind, optionally one channel and a window
    of creation times [created_from, created_until)."""

    kind: str
    channel: str | None = None
    created_from: datetime | None = None
    created_until: datetime | None = None


_TASK_AS_IT_IS = (
    "EXISTS (SELECT 1 FROM actions.task AS t WHERE t.id = (payload -> 'task' ->> 'id')::bigint"
    " AND (t.status = 'open' OR t.updated_at = (payload -> 'task' ->> 'updated_at')::timestamptz))"
)


async def requeue_dead(conn: Connection, which: RequeueFilter) -> int:
    """Put the dead deliveries `which` selects back to pending, attempts from zero, due at
    once; returns how many. Never those that went out after all (`sent_at` set: an earlier
    attempt succeeded after the last was refused), nor the pushes of tasks no longer open
    but their last (the one that closed the task).
    Each keeps its idempotency key."""
    where = _Where()
    where.add("status = 'dead' AND sent_at IS NULL AND kind = {}", which.kind)
    if which.kind == "task":  # only a push of the task as it is: open, or its latest change
        where.add(_TASK_AS_IT_IS)
    if which.channel is not None:
        where.add("channel = {}", which.channel)
    if which.created_from is not None:
        where.add("created_at >= {}", which.created_from)
    if which.created_until is not None:
        where.add("created_at < {}", which.created_until)
    status = await conn.execute(
        "UPDATE actions.delivery SET status = 'pending', attempts = 0,"
        f" available_at = clock_timestamp(){where.sql()}",
        *where.args,
    )
    return row_count(status)
