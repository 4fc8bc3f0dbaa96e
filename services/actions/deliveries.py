"""SQL of the sending side: claim due deliveries, record what happened.

Two clocks, on purpose: `due_at` is business time (the service clock, which tests advance),
`available_at` is Postgres wall time (retry back-off and the in-flight lease), so a frozen
test clock never freezes retries, and a process killed mid-send leaves a lease that expires.

An attempt records the channel it used with its outcome: a delivery planned for the log
because its channel was not configured then, sent by that channel since (`Channels.at_send`),
says so once it is sent, retried or dead (never when it is only put back past quiet hours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.actions.channels import Delivery
from services.actions.db import Connection, Pool, row_count
from shared.group_progress import fetch_in_scope
from shared.partition_scope import EVERYTHING, PartitionScope

# A sequence's steps go out in order, one at a time: a step waits while an earlier step of
# its enrolment is pending (being sent, retried, or put back past quiet hours). Otherwise a
# backlog (the service was down for days) sent all of an enrolment's due steps at once, in
# any order: the survey before the offer it asks about.
# A delivery planned for the log for want of its channel's settings is in that channel's
# route (`skip_routes`): `Channels.at_send` sends it there once this process has them (and
# without them that route has nothing in flight, so is never skipped).
_CLAIM = """
WITH due AS (
    SELECT id FROM actions.delivery AS c
    WHERE status = 'pending' AND kind = ANY($1::text[]) AND due_at <= $2
      AND available_at <= clock_timestamp()
      AND (kind, CASE WHEN channel = 'log' AND payload -> 'fallback' ->> 'reason' = 'not_configured'
                      THEN payload -> 'fallback' ->> 'channel' ELSE channel END)
          NOT IN (SELECT * FROM unnest($5::text[], $6::text[]))
      AND NOT EXISTS (SELECT 1 FROM actions.delivery AS earlier
                      WHERE earlier.enrolment_id = c.enrolment_id AND earlier.status = 'pending'
                        AND earlier.step_index < c.step_index){partitions}
    ORDER BY due_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED)
UPDATE actions.delivery d
SET attempts = d.attempts + 1, claims = d.claims + 1,
    available_at = clock_timestamp() + make_interval(secs => $4)
FROM due WHERE d.id = due.id
RETURNING d.id, d.idempotency_key, d.kind, d.customer_id, d.channel, d.recipient, d.subject,
          d.body, d.payload, d.playbook, d.audience, d.attempts, d.enrolment_id, d.step_name,
          d.tier_change_id, d.due_at, d.claims
"""


Route = tuple[str, str]  # (kind, channel): one receiver, e.g. ("task", "webhook") the CRM


async def claim_due(
    pool: Pool,
    kinds: Sequence[str],
    *,
    now: datetime,
    limit: int,
    lease_s: float,
    scope: PartitionScope = EVERYTHING,
    skip_routes: Sequence[Route] = (),
) -> list[tuple[Delivery, int]]:
    """Lease up to `limit` due deliveries of customers in `scope` (other senders skip them),
    none of the (kind, channel) routes in `skip_routes`; with their attempt number."""
    if scope.nothing:
        return []
    skip_kinds, skip_channels = [k for k, _ in skip_routes], [c for _, c in skip_routes]
    async with pool.acquire() as conn:
        rows = await fetch_in_scope(conn, _CLAIM, scope, list(kinds), now, limit, lease_s,
                                    skip_kinds, skip_channels, schema="actions",
                                    column="customer_id")  # fmt: skip
    return [
        (
            Delivery(
                id=r["id"], key=r["idempotency_key"], kind=r["kind"], customer_id=r["customer_id"],
                channel=r["channel"], recipient=r["recipient"], subject=r["subject"],
                body=r["body"], payload=r["payload"], playbook=r["playbook"],
                audience=r["audience"], enrolment_id=r["enrolment_id"],
                tier_change_id=r["tier_change_id"], due_at=r["due_at"], claim=r["claims"],
            ),
            r["attempts"],
        )
        for r in rows
    ]  # fmt: skip


@dataclass(frozen=True)
class Recorded:
    """What recording an attempt did: `applied` is False when a newer attempt holds the
    delivery (this attempt's lease ran out and it was claimed again), so the newer attempt's
    outcome is the one that counts; `sequence` names a step's sequence when it finished;
    `cancelled` says the step was cancelled (its sequence exited) while this attempt sent it;
    `decided` is the status that was recorded before, when not `applied`.
    """

    applied: bool
    sequence: str | None = None
    cancelled: bool = False
    decided: str | None = None


async def record_sent(
    pool: Pool, delivery: Delivery, *, now: datetime, note: str | None = None
) -> Recorded:
    """Mark a pending delivery sent (once); `sequence` names a step's sequence. `note` is
    kept as its `last_error` (an e-mail whose server never confirmed it).

    `applied` is False when the delivery's outcome was decided already: sent by another
    attempt, or dead-lettered by a newer one (the newer attempt decides; it was counted
    then; its `sent_at` now records that it went out after all, for whoever would replay
    the dead letter). A step cancelled while this attempt was sending it (its sequence
    exited) did go out, but was counted as cancelled when its sequence exited: it stays
    `cancelled`, with its `sent_at` recording that it went out anyway (`cancelled` is True),
    so it counts once.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _lock_enrolment(conn, delivery)
        status = await conn.fetchval(
            "UPDATE actions.delivery SET sent_at = $2,"
            " last_error = CASE status WHEN 'pending' THEN $5 ELSE last_error END,"
            " status = CASE status WHEN 'pending' THEN 'sent' ELSE status END,"
            " channel = COALESCE($3, channel), payload = COALESCE($4::jsonb, payload)"
            " WHERE id = $1 AND (status = 'pending'"
            "                    OR status IN ('cancelled', 'dead') AND sent_at IS NULL)"
            " RETURNING status",
            delivery.id, now, *_route(delivery), note,
        )  # fmt: skip
        if status == "dead":
            if delivery.enrolment_id is not None:  # it did reach the customer after all
                await conn.execute(
                    "UPDATE actions.enrolment SET status = 'completed'"
                    " WHERE id = $1 AND status = 'failed'", delivery.enrolment_id,
                )  # fmt: skip
            return Recorded(applied=False, decided=status)
        if status is None:
            decided = await conn.fetchval(
                "SELECT status FROM actions.delivery WHERE id = $1", delivery.id
            )
            return Recorded(applied=False, decided=decided)
        if status == "cancelled":
            return Recorded(applied=True, cancelled=True)
        if delivery.enrolment_id is not None:  # a step: alerts and pushes have no spacing
            await conn.execute(_KEEP_SPACING, delivery.id, now)
        return Recorded(applied=True, sequence=await _finish_step(conn, delivery, now=now))


# A step sent late moves its enrolment's later steps by as much: after an outage, or steps
# held behind a backlog, the welcome mails of days 1, 3, 7 and 14 went out moments apart.
_KEEP_SPACING = """
UPDATE actions.delivery AS later SET due_at = later.due_at + ($2::timestamptz - sent.due_at)
FROM actions.delivery AS sent
WHERE sent.id = $1 AND sent.enrolment_id IS NOT NULL AND $2::timestamptz > sent.due_at
  AND later.enrolment_id = sent.enrolment_id AND later.status = 'pending'
  AND later.step_index > sent.step_index
"""


async def record_failure(
    pool: Pool, delivery: Delivery, error: str, *, retry_in_s: float | None, now: datetime
) -> Recorded:
    """Schedule a retry after `retry_in_s`, or (None) dead-letter it with the error.

    Only while the delivery's claim is still the latest: an attempt that outlived its lease
    must not reschedule (and so un-lease) the attempt that replaced it.
    """
    async with pool.acquire() as conn, conn.transaction():
        if retry_in_s is not None:
            status = await conn.execute(
                "UPDATE actions.delivery SET last_error = $2,"
                " available_at = clock_timestamp() + make_interval(secs => $3),"
                " channel = COALESCE($5, channel), payload = COALESCE($6::jsonb, payload)"
                " WHERE id = $1 AND status = 'pending' AND claims = $4",
                delivery.id, error[:1000], retry_in_s, delivery.claim, *_route(delivery),
            )  # fmt: skip
            return Recorded(applied=row_count(status) > 0)
        await _lock_enrolment(conn, delivery)
        status = await conn.execute(
            "UPDATE actions.delivery SET status = 'dead', last_error = $2,"
            " channel = COALESCE($4, channel), payload = COALESCE($5::jsonb, payload)"
            " WHERE id = $1 AND status = 'pending' AND claims = $3",
            delivery.id, error[:1000], delivery.claim, *_route(delivery),
        )  # fmt: skip
        if not row_count(status):
            return Recorded(applied=False)
        return Recorded(applied=True, sequence=await _finish_step(conn, delivery, now=now))


def _route(delivery: Delivery) -> tuple[str | None, dict[str, Any] | None]:
    """The channel and payload an attempt used, recorded with its outcome when they are no
    longer its row's (`Channels.at_send`: its channel was configured since it was planned);
    None and None leave the row's (COALESCE)."""
    if not delivery.rerouted:
        return None, None
    return delivery.channel, delivery.payload


async def defer(pool: Pool, delivery: Delivery, *, due_at: datetime) -> bool:
    """Put a claimed delivery back unsent, due at `due_at`, its claim not counted as an
    attempt; False when a newer attempt (its lease ran out) already holds it."""
    async with pool.acquire() as conn:
        status = await conn.execute(
            "UPDATE actions.delivery SET due_at = $2, attempts = attempts - 1,"
            " available_at = clock_timestamp()"
            " WHERE id = $1 AND status = 'pending' AND claims = $3",
            delivery.id, due_at, delivery.claim,
        )  # fmt: skip
    return row_count(status) > 0


async def _lock_enrolment(conn: Connection, delivery: Delivery) -> None:
    """Lock a step's enrolment before its step, in the order an exit does (no deadlock), and
    so that two steps finishing together cannot both miss completing it."""
    if delivery.enrolment_id is not None:
        await conn.execute(
            "SELECT 1 FROM actions.enrolment WHERE id = $1 FOR UPDATE", delivery.enrolment_id
        )


async def _finish_step(conn: Connection, delivery: Delivery, *, now: datetime) -> str | None:
    """End the enrolment once none of its steps is pending any more: `completed` when one
    of them reached the customer, `failed` when none did: every one died, or went to the log
    for want of its channel or an address (a `fallback`: counted as `completed`, a sequence
    that reached nobody passed for done)."""
    if delivery.enrolment_id is None:
        return None
    await conn.execute(
        "UPDATE actions.enrolment SET ended_at = $2, status = CASE WHEN EXISTS (SELECT 1"
        " FROM actions.delivery WHERE enrolment_id = $1 AND sent_at IS NOT NULL"
        "                             AND NOT payload ? 'fallback')"
        " THEN 'completed' ELSE 'failed' END"
        " WHERE id = $1 AND status = 'active' AND NOT EXISTS (SELECT 1 FROM actions.delivery"
        " WHERE enrolment_id = $1 AND status = 'pending')",
        delivery.enrolment_id, now,
    )  # fmt: skip
    sequence: str = delivery.payload["sequence"]
    return sequence


# 2.0 ** 1024 overflows a float (OverflowError) when ACTIONS_MAX_ATTEMPTS is above 1024; even
# a base of 1e-300 s doubled 1023 times is 9e7 s, past any cap, so doubling stops there.
_MAX_DOUBLINGS = 1023


def backoff_s(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Exponential back-off with jitter: half the delay fixed, half random (`jitter` in [0, 1])."""
    delay = min(cap, base * 2.0 ** min(max(0, attempt - 1), _MAX_DOUBLINGS))
    return delay / 2 + delay / 2 * jitter
