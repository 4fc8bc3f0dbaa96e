"""Population mode: recompute R/F/M quintile cut points, re-bucket customers (cause `rebucket`).

Only used when the rules say `scores.mode: population`. One process at a time computes
(a session advisory lock); every process picks the newest stored version up.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal

from services.scorer import store
from services.scorer.db import Connection, Pool
from services.scorer.evaluation import Scoring, evaluate_all
from services.scorer.metrics import ScorerMetrics
from services.scorer.sweeper import report_pass
from shared.clock import Clock
from shared.contracts import ChangeCause
from shared.domain.features import FeatureValue, compute_features
from shared.domain.population import CutPoints, compute_cut_points
from shared.domain.rules import Rules
from shared.domain.state import prune, state_from_json
from shared.group_progress import everything
from shared.partition_scope import PartitionScope

REBUCKET_LOCK_KEY = 0x7469_6572_7265_6C02
PAGE = 1000


class ScoringHolder:
    """The rules and the newest cut points, shared by the consumer, sweeper and API."""

    def __init__(self, rules: Rules, cut_points: CutPoints | None = None) -> None:
        self._scoring = Scoring(rules, cut_points)

    def __call__(self) -> Scoring:
        return self._scoring

    @property
    def population_mode(self) -> bool:
        return self._scoring.rules.scores.mode == "population"

    def use(self, cut_points: CutPoints | None) -> None:
        """Switch to other cut points; ones of other R/F/M features than the rules' (stored
        before the rules file changed them) are not used: the rules' bands score until the
        cut points are computed again."""
        if cut_points is not None and not cut_points.fit(score_features(self._scoring.rules)):
            cut_points = None
        self._scoring = Scoring(self._scoring.rules, cut_points)


_NEWEST = "FROM scorer.cut_points ORDER BY created_at DESC, version LIMIT 1"
_NEWEST_VERSION = f"SELECT version {_NEWEST}"


async def latest_cut_points(conn: Connection) -> CutPoints | None:
    """The newest stored cut points, if any."""
    return _cut_points(await conn.fetchval(f"SELECT data {_NEWEST}"))


async def stored_cut_points(conn: Connection, version: str) -> CutPoints | None:
    """The stored cut points of `version`, if stored."""
    data = await conn.fetchval("SELECT data FROM scorer.cut_points WHERE version = $1", version)
    return _cut_points(data)


def _cut_points(data: str | None) -> CutPoints | None:
    if data is None:
        return None
    raw = json.loads(data)
    features = raw.get("features")
    return CutPoints(
        version=raw["version"], recency=tuple(raw["recency"]),
        frequency=tuple(raw["frequency"]), monetary=tuple(raw["monetary"]),
        features=(features[0], features[1], features[2]) if features else None,
    )  # fmt: skip


def score_features(rules: Rules) -> tuple[str, str, str]:
    """The R, F and M features of `rules`' scores."""
    scores = rules.scores
    return scores.recency.feature, scores.frequency.feature, scores.monetary.feature


class Rebucketer:
    """Periodic cut-point recomputation and re-bucketing."""

    def __init__(
        self,
        pool: Pool,
        holder: ScoringHolder,
        *,
        clock: Clock,
        metrics: ScorerMetrics,
        on_changes: Callable[[], None] = lambda: None,
        scope: Callable[[Connection], Awaitable[PartitionScope]] = everything,
    ) -> None:
        """`scope`: the customers whose events are all read (shared/group_progress.py)."""
        self.pool, self.holder, self.clock, self.metrics = pool, holder, clock, metrics
        self.on_changes, self.scope = on_changes, scope

    async def step(self) -> bool:
        """Recompute cut points when we hold the lock, else adopt the newest stored ones."""
        if not self.holder.population_mode:
            return False
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUCKET_LOCK_KEY):
                self.holder.use(await latest_cut_points(conn))
                return False
            try:
                if (await self.scope(conn)).everything:
                    await self._recompute(conn)
                else:  # quintiles of stale features; recomputed once every partition is read
                    self.holder.use(await latest_cut_points(conn))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", REBUCKET_LOCK_KEY)
        return False

    async def adopt_step(self) -> bool:
        """Use the newest stored cut points, if another process stored newer ones: the
        processes of a group then score alike within one poll, not one rebucket interval."""
        if self.holder.population_mode:
            async with self.pool.acquire() as conn:
                newest = await conn.fetchval(_NEWEST_VERSION)
                current = self.holder().cut_points
                if newest is not None and (current is None or current.version != newest):
                    self.holder.use(await latest_cut_points(conn))
        return False

    async def _recompute(self, conn: Connection) -> None:
        current = await latest_cut_points(conn)
        cut_points = await self._population_cut_points(conn)
        if current is not None and current.version == cut_points.version:
            cut_points = current
        else:
            await conn.execute(
                "INSERT INTO scorer.cut_points (version, data) VALUES ($1, $2::jsonb)"
                " ON CONFLICT (version) DO UPDATE SET created_at = now()",
                cut_points.version,
                json.dumps(dataclasses.asdict(cut_points)),
            )
        self.holder.use(cut_points)
        # Also when the version is unchanged: an earlier walk left out the customers of
        # partitions that fell behind while it ran, and nothing else would re-bucket those
        # without events (nor a customer a process on older cut points scored meanwhile).
        await self._rebucket_all(cut_points.version)

    async def _population_cut_points(self, conn: Connection) -> CutPoints:
        async with conn.transaction():
            return await population_cut_points(conn, self.holder().rules, now=self.clock.now())

    async def _rebucket_all(self, version: str) -> None:
        """Re-bucket the customers not scored with cut points `version`, page by page."""
        after = ""
        scoring = self.holder()
        # What each earlier version scored with (None: the rules' bands), for catching a due
        # customer up with the cut points in force until now (evaluate_all).
        earlier: dict[str | None, Scoring] = {None: Scoring(scoring.rules)}
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                # Customers whose events are unread are left out: the consumer re-evaluates
                # them with these cut points when it reads them, or the next walk does.
                scope = await self.scope(conn)
                page = await store.lock_rebucket_page(
                    conn, cut_points_version=version, after=after, limit=PAGE, scope=scope
                )
                for old in {old for _, old in page} - earlier.keys():
                    cut_points = await stored_cut_points(conn, old) if old else None
                    # A version no longer stored: caught up with the new ones instead.
                    earlier[old] = Scoring(scoring.rules, cut_points) if cut_points else scoring
                # Read after the lock: a walk takes minutes, and an older `now` would undo
                # the time-driven moves the consumer or sweeper made meanwhile.
                now = self.clock.now()
                outcome = evaluate_all(
                    [record for record, _ in page], scoring, now=now,
                    cause=ChangeCause.REBUCKET,
                    scored_with={record.customer_id: earlier[old] for record, old in page},
                )  # fmt: skip
                await store.save_outcome(conn, outcome)
            report_pass(self.metrics, ChangeCause.REBUCKET, outcome, self.on_changes)
            if len(page) < PAGE:
                return
            after = page[-1][0].customer_id


async def population_cut_points(conn: Connection, rules: Rules, *, now: datetime) -> CutPoints:
    """The quintile cut points of the stored population for `rules`' R/F/M features at `now`
    (inside a transaction: the cursor needs one)."""
    names = score_features(rules)
    columns: tuple[list[float], list[float], list[float]] = ([], [], [])
    query = "SELECT state FROM scorer.customer WHERE state IS NOT NULL"
    async for row in conn.cursor(query, prefetch=PAGE):
        state = state_from_json(json.loads(row["state"]))
        prune(state, now=now)
        features = compute_features(state, now=now)
        for column, name in zip(columns, names, strict=True):
            value = _number(features.get(name))
            if value is not None:
                column.append(value)
    return compute_cut_points(*columns, features=names)


def _number(value: FeatureValue) -> float | None:
    """A numeric feature value as float; None for missing, text or booleans."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)
