"""Each process's consumer progress, shared through Postgres, for time-driven work.

Every `*_PROGRESS_INTERVAL_S` a process records how far its consumer is through the
partitions it owns (`<schema>.partition_progress`, stamped with the group generation).
Work decided by the clock (the scorer's time sweeps, actions' sequence steps) reads what
the whole group recorded and takes only customers of partitions that are read
(shared/partition_scope.py). The tables: shared/progress_ddl.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from prometheus_client import Gauge

from shared.fenced_consumer import FencedConsumer, PartitionLag
from shared.logging import get_logger
from shared.partition_scope import EVERYTHING, PartitionProgress, PartitionScope, settled_scope
from shared.pg import Connection, Pool

log = get_logger(__name__)


async def everything(conn: Connection) -> PartitionScope:
    """The scope without a consumer group (tools and tests): every customer."""
    return EVERYTHING


async def fetch_in_scope(
    conn: Connection, query: str, scope: PartitionScope, *args: Any, schema: str, column: str
) -> list[Any]:
    """`query`'s rows for the customers in `scope` only. `{partitions}` in `query` marks
    where a WHERE term goes (`AND <schema>.kafka_partition(<column>, n) = ANY(settled)`,
    its two parameters after `args`); with every partition read it is left out."""
    if scope.nothing:
        return []
    if scope.everything:
        return list(await conn.fetch(query.format(partitions=""), *args))
    first = len(args) + 1
    term = f" AND {schema}.kafka_partition({column}, ${first}) = ANY(${first + 1}::int[])"
    return list(
        await conn.fetch(
            query.format(partitions=term), *args, scope.partitions, sorted(scope.settled)
        )
    )


async def report_progress(
    conn: Connection,
    schema: str,
    group_id: str,
    generation: int,
    lags: Sequence[PartitionLag],
    *,
    max_age_s: float,
) -> None:
    """Record how far this process's consumer is through its partitions.

    `heard_at` in the database's clock, so processes on hosts with skewed clocks agree on
    which records are fresh. A record of an earlier generation never replaces a fresh later
    one (a process that lost the partition and had not noticed yet); it does replace a
    record older than `max_age_s`, which counts for nothing anyway: generations start again
    when the group is created again (a new broker or cluster, the group deleted or expired),
    and the old, higher ones would otherwise hold every partition until the new group's
    rebalances climbed past them.
    """
    if not lags:
        return
    await conn.execute(
        f"INSERT INTO {schema}.partition_progress AS p"
        " (group_id, topic, partition, generation, behind, heard_at)"
        " SELECT $1, t, n, $2, b, statement_timestamp() - a * interval '1 second'"
        " FROM unnest($3::text[], $4::int[], $5::int8[], $6::float8[]) AS u(t, n, b, a)"
        " ON CONFLICT (group_id, topic, partition) DO UPDATE SET generation = EXCLUDED.generation,"
        " behind = EXCLUDED.behind, heard_at = EXCLUDED.heard_at"
        " WHERE p.generation <= EXCLUDED.generation"
        " OR p.heard_at < statement_timestamp() - $7 * interval '1 second'",
        group_id,
        generation,
        [lag.topic for lag in lags],
        [lag.partition for lag in lags],
        [lag.behind for lag in lags],
        [lag.heard_age_s for lag in lags],
        max_age_s,
    )


async def read_progress(
    conn: Connection, schema: str, group_id: str, *, max_age_s: float
) -> list[PartitionProgress]:
    """The group's progress records; `fresh` when heard at most `max_age_s` ago."""
    rows = await conn.fetch(
        "SELECT topic, partition, generation, behind,"
        " heard_at >= statement_timestamp() - $2 * interval '1 second' AS fresh"
        f" FROM {schema}.partition_progress WHERE group_id = $1",
        group_id,
        max_age_s,
    )
    return [PartitionProgress(**dict(row)) for row in rows]


class GroupProgress:
    """Records this consumer's progress, and tells time-driven work which customers it may
    take (logging when partitions start or stop being held, and counting them in `held`)."""

    def __init__(
        self,
        events: FencedConsumer,
        pool: Pool,
        *,
        schema: str,
        topics: Sequence[str],
        max_lag: int,
        max_age_s: float,
        held: Gauge,
        work: str,
    ) -> None:
        self.events, self.pool, self.schema, self.topics = events, pool, schema, topics
        self.max_lag, self.max_age_s, self.held_gauge, self.work = max_lag, max_age_s, held, work
        self.holding = False
        self._on_read: list[asyncio.Event] = []

    def woken_when_read(self) -> asyncio.Event:
        """An event set each time every partition is read again, after some were held: work
        that skipped a round while held (a whole pass, not just some customers) resumes."""
        event = asyncio.Event()
        self._on_read.append(event)
        return event

    async def report_step(self) -> bool:
        """Record the progress of every partition this consumer owns and has heard from."""
        generation = self.events.group_generation()
        lags = await self.events.progress()
        if generation is not None and lags:
            async with self.pool.acquire() as conn:
                await report_progress(conn, self.schema, self.events.group_id, generation, lags,
                                      max_age_s=self.max_age_s)  # fmt: skip
        return False

    async def scope(self, conn: Connection) -> PartitionScope:
        """Which customers time-driven work may take now."""
        partitions = self.events.consumer.partitions_for_topic
        counts = {topic: len(partitions(topic) or ()) or None for topic in self.topics}
        rows = await read_progress(
            conn, self.schema, self.events.group_id, max_age_s=self.max_age_s
        )
        generation = self.events.group_generation()
        scope = settled_scope(counts, rows, generation=generation, max_lag=self.max_lag)
        self._note(scope)
        return scope

    def _note(self, scope: PartitionScope) -> None:
        holding = not scope.everything
        if holding != self.holding:
            if holding:
                log.info(f"{self.work} hold the customers of partitions still being read",
                         held=list(scope.held[:20]), held_count=len(scope.held))  # fmt: skip
            else:
                log.info(f"every partition is read; {self.work} take every customer")
                for event in self._on_read:
                    event.set()
            self.holding = holding
        self.held_gauge.set(len(scope.held))
