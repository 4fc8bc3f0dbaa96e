"""SQL of the sending side: claim due deliveries, record what happened.

Two clocks, on purpose: `due_at` is business time (the service clock, which tests advance),
`available_at` is Postgres wall time (retry back-off and the in-flight lease), so a frozen
test clock never freezes retries, and a process killed mid-send leaves a lease that expires.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from asyncpg import Record

from services.actions.channels import Delivery
from services.actions.db import Connection, Pool

_CLAIM = """
WITH due AS (
    SELECT id FROM actions.delivery
    WHERE status = 'pending' AND kind = ANY($1::text[]) AND due_at <= $2
      AND available_at <= clock_timestamp()
    ORDER BY due_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED)
UPDATE actions.delivery d
SET attempts = d.attempts + 1, available_at = clock_timestamp() + make_interval(secs => $4)
FROM due WHERE d.id = due.id
RETURNING d.id, d.idempotency_key, d.kind, d.customer_id, d.channel, d.recipient, d.subject,
          d.body, d.payload, d.playbook, d.audience, d.attempts, d.enrolment_id, d.step_name
"""


async def claim_due(
    pool: Pool, kinds: Sequence[str], *, now: datetime, limit: int, lease_s: float
) -> list[tuple[Delivery, int]]:
    """Lease up to `limit` due deliveries (other senders skip them); with their attempt number."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_CLAIM, list(kinds), now, limit, lease_s)
    return [
        (
            Delivery(
                id=r["id"], key=r["idempotency_key"], kind=r["kind"], customer_id=r["customer_id"],
                channel=r["channel"], recipient=r["recipient"], subject=r["subject"],
                body=r["body"], payload=r["payload"], playbook=r["playbook"],
                audience=r["audience"],
            ),
            r["attempts"],
        )
        for r in rows
    ]  # fmt: skip


async def record_sent(pool: Pool, delivery_id: int, *, now: datetime) -> str | None:
    """Mark a delivery sent (once); returns its sequence name when it was a step."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE actions.delivery SET status = 'sent', sent_at = $2, last_error = NULL"
            " WHERE id = $1 AND status <> 'sent' RETURNING enrolment_id, payload",
            delivery_id, now,
        )  # fmt: skip
        return await _finish_step(conn, row, now=now)


async def record_failure(
    pool: Pool, delivery_id: int, error: str, *, retry_in_s: float | None, now: datetime
) -> str | None:
    """Schedule a retry after `retry_in_s`, or (None) dead-letter it with the error."""
    async with pool.acquire() as conn, conn.transaction():
        if retry_in_s is not None:
            await conn.execute(
                "UPDATE actions.delivery SET last_error = $2,"
                " available_at = clock_timestamp() + make_interval(secs => $3)"
                " WHERE id = $1 AND status = 'pending'",
                delivery_id, error[:1000], retry_in_s,
            )  # fmt: skip
            return None
        row = await conn.fetchrow(
            "UPDATE actions.delivery SET status = 'dead', last_error = $2"
            " WHERE id = $1 AND status = 'pending' RETURNING enrolment_id, payload",
            delivery_id, error[:1000],
        )  # fmt: skip
        return await _finish_step(conn, row, now=now)


async def _finish_step(conn: Connection, row: Record | None, *, now: datetime) -> str | None:
    """Complete the enrolment once none of its steps is pending any more."""
    if row is None or row["enrolment_id"] is None:
        return None
    await conn.execute(
        "UPDATE actions.enrolment SET status = 'completed', ended_at = $2"
        " WHERE id = $1 AND status = 'active' AND NOT EXISTS (SELECT 1 FROM actions.delivery"
        " WHERE enrolment_id = $1 AND status = 'pending')",
        row["enrolment_id"], now,
    )  # fmt: skip
    sequence: str = row["payload"]["sequence"]
    return sequence


def backoff_s(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Exponential back-off with jitter: half the delay fixed, half random (`jitter` in [0, 1])."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay / 2 + delay / 2 * jitter
