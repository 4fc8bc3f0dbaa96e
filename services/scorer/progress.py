"""Each process's consumer progress, shared through Postgres for every process's time sweeps.

Every `SCORER_PROGRESS_INTERVAL_S` a process records how far its consumer is through the
partitions it owns (`scorer.partition_progress`, stamped with the group generation); a sweep
reads what the whole group recorded and takes only customers of settled partitions
(sweep_scope.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.scorer import store
from services.scorer.db import Connection, Pool
from services.scorer.sweep_scope import SweepScope, sweep_scope
from shared.fenced_consumer import FencedConsumer


class GroupProgress:
    """Reports this consumer's progress and tells the sweeper its scope."""

    def __init__(
        self,
        events: FencedConsumer,
        pool: Pool,
        *,
        group_id: str,
        topics: Sequence[str],
        max_lag: int,
        max_age_s: float,
    ) -> None:
        self.events, self.pool, self.group_id, self.topics = events, pool, group_id, topics
        self.max_lag, self.max_age_s = max_lag, max_age_s

    async def report_step(self) -> bool:
        """Record the progress of every partition this consumer owns and has heard from."""
        generation = self.events.group_generation()
        lags = await self.events.progress()
        if generation is not None and lags:
            async with self.pool.acquire() as conn:
                await store.report_progress(conn, self.group_id, generation, lags)
        return False

    async def scope(self, conn: Connection) -> SweepScope:
        """Which due customers a time sweep may take now."""
        partitions = self.events.consumer.partitions_for_topic
        counts = {topic: len(partitions(topic) or ()) or None for topic in self.topics}
        rows = await store.read_progress(conn, self.group_id, max_age_s=self.max_age_s)
        generation = self.events.group_generation()
        return sweep_scope(counts, rows, generation=generation, max_lag=self.max_lag)
