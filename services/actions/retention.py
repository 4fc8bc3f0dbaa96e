"""Retention: the inbox and the goal events would grow forever; a periodic loop prunes them.

Why old inbox rows may go: the inbox exists to recognise a tier change delivered a second
time. Our own consumer never re-reads what it applied: the offsets are stored in Postgres in
the same transaction as the inbox rows, and it seeks to them on every assignment. So a second
delivery can only come from the topic itself (the scorer's relay republishing after a crash,
minutes later, or someone replaying the topic), and Kafka keeps a record only for the topic's
retention. Inbox rows kept at least that long still catch every redelivery that can arrive.

Why old goal events may go: a goal event (a customer's latest purchase) only stops enrolments
triggered before it. Once it is older than the longest sequence and the inbox retention, a
change it could still stop would be older than anything we promise to handle as fresh, and a
sequence it could end has had all its steps sent already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.actions.db import Pool, row_count
from services.actions.metrics import ActionsMetrics
from services.actions.settings import ActionsSettings
from shared.clock import Clock
from shared.domain.playbooks import Playbooks, longest_sequence
from shared.logging import get_logger
from shared.loops import Step

log = get_logger(__name__)

BATCH = 5_000  # rows per DELETE: short statements, short locks; the loop repeats while full

# processed_at is Postgres wall time (set on insert), so the cutoff is too.
_PRUNE_INBOX = """
DELETE FROM actions.inbox i
USING (SELECT message_id FROM actions.inbox
       WHERE processed_at < now() - make_interval(days => $1) LIMIT $2) old
WHERE i.message_id = old.message_id
"""
# last_at is event time, compared with the service clock; the outer condition is re-checked
# on a row a concurrent purchase just moved forward, which then stays.
_PRUNE_GOALS = """
DELETE FROM actions.goal_event g
USING (SELECT customer_id, event_type FROM actions.goal_event WHERE last_at < $1 LIMIT $2) old
WHERE g.customer_id = old.customer_id AND g.event_type = old.event_type AND g.last_at < $1
"""


@dataclass(frozen=True)
class Retention:
    """How long rows are kept: inbox rows by processing time, goal events by event time."""

    inbox_days: int
    goal_age: timedelta
    batch: int = BATCH


def retention_for(settings: ActionsSettings, playbooks: Playbooks) -> Retention | None:
    """The configured retention; None keeps everything (ACTIONS_INBOX_RETENTION_DAYS=0)."""
    days = settings.inbox_retention_days
    if days == 0:
        return None
    return Retention(days, max(timedelta(days=days), longest_sequence(playbooks.sequences)))


async def prune(pool: Pool, retention: Retention, *, now: datetime) -> dict[str, int]:
    """Delete up to one batch of expired rows per table; returns the rows deleted per table."""
    async with pool.acquire() as conn:
        inbox = await conn.execute(_PRUNE_INBOX, retention.inbox_days, retention.batch)
        goals = await conn.execute(_PRUNE_GOALS, now - retention.goal_age, retention.batch)
    return {"inbox": row_count(inbox), "goal_event": row_count(goals)}


def prune_step(pool: Pool, retention: Retention, clock: Clock, metrics: ActionsMetrics) -> Step:
    """One pass of the retention loop; busy (run again at once) while a batch came back full."""

    async def step() -> bool:
        pruned = await prune(pool, retention, now=clock.now())
        for table, count in pruned.items():
            metrics.pruned_rows.labels(table).inc(count)
        if any(pruned.values()):
            log.info("expired rows pruned", **pruned)
        return max(pruned.values()) >= retention.batch

    return step
