"""The time sweeper: re-evaluates customers whose next review time has come (cause `time`).

It reads the review-time index of `customer_review` only, so a sweep costs the customers
that are due, not the whole population. Rows a consumer holds are skipped (SKIP LOCKED):
that consumer re-evaluates them anyway. Customers of partitions a consumer is still reading
wait (shared/group_progress.py). After a rules file change it also re-classifies
the customers classified under the old rules (cause `rule_change`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from services.scorer import store
from services.scorer.db import Connection, Pool
from services.scorer.evaluation import Outcome, Scoring, catch_up_all, evaluate_all
from services.scorer.metrics import ScorerMetrics
from shared.clock import Clock
from shared.contracts import ChangeCause
from shared.group_progress import everything
from shared.logging import get_logger
from shared.partition_scope import PartitionScope

log = get_logger(__name__)

# Bound one sweep's work; the rest waits for the next sweep (or the next call when busy).
MAX_ROUNDS_PER_STEP = 20


class Sweeper:
    """Periodically re-classifies due customers."""

    def __init__(
        self,
        pool: Pool,
        *,
        scoring: Callable[[], Scoring],
        clock: Clock,
        batch: int,
        metrics: ScorerMetrics,
        on_changes: Callable[[], None] = lambda: None,
        scope: Callable[[Connection], Awaitable[PartitionScope]] = everything,
        retry: timedelta,
    ) -> None:
        """`retry` (SCORER_SWEEP_RETRY_S): how long a customer whose time re-evaluation
        raised waits for the next try (its review time is moved); one that fails under new
        rules is not tried again by this process until the rules change again."""
        self.pool, self.scoring, self.clock, self.batch = pool, scoring, clock, batch
        self.metrics, self.on_changes, self.scope, self.retry = metrics, on_changes, scope, retry
        self.superseded = False  # another process started with newer rules
        self.unmigrated: tuple[str, set[str]] = ("", set())  # rules version, customers

    async def step(self) -> bool:
        """Sweep everything due now; True when work was left for an immediate next step.

        Not while another process runs newer rules: this one's would move the customers it
        sweeps back to its classes, and the newer process would move them again (each move
        published and acted on). The newer process sweeps them all.
        """
        if await self._superseded():
            return False
        started = asyncio.get_running_loop().time()
        now = self.clock.now()
        swept = 0
        for _ in range(MAX_ROUNDS_PER_STEP):
            count = await self.sweep_batch(now)
            swept += count
            if count < self.batch:
                break
        self.metrics.sweep_duration.observe(asyncio.get_running_loop().time() - started)
        return swept >= self.batch * MAX_ROUNDS_PER_STEP

    async def sweep_batch(self, now: datetime) -> int:
        """Re-evaluate up to `batch` due customers in one transaction; returns how many."""
        return await self._reevaluate(ChangeCause.TIME, now)

    async def migrate_step(self) -> bool:
        """Re-classify a batch of customers classified under other rules; True while busy.

        Only with the rules activated last: a process still on an older file (a rolling
        deploy) would otherwise move the customers back, and the two would take turns.
        """
        if await self._superseded():
            return False
        return await self._reevaluate(ChangeCause.RULE_CHANGE, self.clock.now()) >= self.batch

    async def _superseded(self) -> bool:
        """Whether another process activated other rules after this one started (then this
        one neither sweeps nor re-classifies); kept in `superseded` and the gauge."""
        mine = self.scoring().rules.version
        async with self.pool.acquire() as conn:
            active = await store.active_rules_version(conn)
        superseded = active is not None and active != mine
        if superseded and not self.superseded:
            log.warning("rules superseded by a newer file; not sweeping or re-classifying",
                        mine=mine, active=active)  # fmt: skip
        self.superseded = superseded
        self.metrics.rules_superseded.set(int(superseded))
        return superseded

    async def _reevaluate(self, cause: ChangeCause, now: datetime) -> int:
        scoring = self.scoring()
        async with self.pool.acquire() as conn, conn.transaction():
            # Not a customer whose events may still be unread (partition_scope.py): evaluated
            # at `now` without them, it would look silent, and a downgrade decided so would
            # be emitted, acted on, then undone by them. Held customers wait for a later round.
            scope = await self.scope(conn)
            if cause is ChangeCause.TIME:
                due = await store.claim_due_customers(conn, now=now, limit=self.batch, scope=scope)
                outcome, count = catch_up_all(due, scoring, now=now), len(due)
                if outcome.failed:  # out of the way of the sweeps that claim the oldest due
                    await store.postpone_reviews(conn, list(outcome.failed), now + self.retry)
            else:
                unmigrated = self._unmigrated(scoring.rules.version)
                records = await store.claim_outdated_customers(
                    conn, rules_version=scoring.rules.version, limit=self.batch, scope=scope,
                    skip=sorted(unmigrated),
                )  # fmt: skip
                outcome, count = evaluate_all(records, scoring, now=now, cause=cause), len(records)
                unmigrated.update(outcome.failed)
            await store.save_outcome(conn, outcome)
        report_pass(self.metrics, cause, outcome, self.on_changes)
        return count

    def _unmigrated(self, version: str) -> set[str]:
        """The customers whose re-classification under rules `version` raised here."""
        if self.unmigrated[0] != version:
            self.unmigrated = (version, set())
        return self.unmigrated[1]


def report_pass(
    metrics: ScorerMetrics, cause: ChangeCause, outcome: Outcome, on_changes: Callable[[], None]
) -> None:
    """After a re-evaluation pass (for `cause`) committed: count its customers and class
    changes, log and count those whose evaluation raised, and wake the relay for its changes."""
    metrics.sweep_customers.labels(cause.value).inc(len(outcome.updates))
    metrics.count_transitions(outcome.changes)
    if outcome.changes:
        on_changes()
    if outcome.cut_short:
        metrics.count_cut_short(cause, len(outcome.cut_short))
    if outcome.failed:
        metrics.evaluation_failures.labels(cause.value).inc(len(outcome.failed))
    for customer_id, error in outcome.failed.items():
        log.error("customer's re-evaluation failed; left as it was", cause=cause.value,
                  error=error)  # fmt: skip
        log.debug("customer not re-evaluated", customer_id=customer_id)
