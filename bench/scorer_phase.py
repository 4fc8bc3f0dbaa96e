"""The scorer phase: the real scorer process drains a pre-loaded topic into a fresh database.

Everything production does runs (inbox, fold, classify, customer upsert, outbox, fenced
offsets, relay, sweeper). The rate is timed from the first committed batch to the moment
the offsets stored in `scorer.consumer_offset` reach the end of every partition, so
process start-up and the consumer-group join are left out (and reported apart).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.cpu import CpuMeter
from bench.infra import Infra, Service, fresh_database, running_all, service_env, unique_name
from bench.kafka_raw import Loaded
from bench.profiling import Profiler
from services.scorer.relay import BACKLOG_QUERY
from shared.db import asyncpg_dsn
from shared.topics import SCORER_GROUP

POLL_S = 0.05
BATCH_METRIC = "tierstream_scorer_batch_"


@dataclass(frozen=True)
class ScorerRun:
    """One drain of the loaded topic."""

    events: int  # events committed after the first batch (the timed part)
    seconds: float
    startup_s: float  # process start to the first committed batch
    peak_rss_mb: float
    cpu_s: dict[str, float]
    outbox_backlog: int  # changes not yet relayed when the offsets reached the end
    batches: dict[str, float]  # from the scorer's own /metrics: count, mean size, mean seconds

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class _Watch:
    first_at: float | None = None
    first_committed: int = 0
    committed: int = 0
    peak_rss: int = 0


async def committed_offsets(
    conn: asyncpg.Connection[asyncpg.Record], group_id: str = SCORER_GROUP
) -> int:
    """Events the scorer has committed: the sum of its stored next offsets."""
    value = await conn.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM scorer.consumer_offset WHERE group_id = $1",
        group_id,
    )
    return int(value)


async def _drain(
    conn: asyncpg.Connection[asyncpg.Record], services: Sequence[Service], loaded: Loaded,
    meter: CpuMeter, timeout_s: float, window_s: float | None, group_id: str,
) -> tuple[_Watch, float]:  # fmt: skip
    """Poll the stored offsets until they reach the end and the outbox is empty (or
    `window_s` after the first commit, when given); returns the watch and the end time."""
    watch, deadline = _Watch(), time.monotonic() + timeout_s
    processes = [service.process() for service in services]
    while time.monotonic() < deadline:
        watch.committed = await committed_offsets(conn, group_id)
        now = time.perf_counter()
        rss = sum(process.memory_info().rss for process in processes)
        watch.peak_rss = max(watch.peak_rss, rss)
        if watch.committed and watch.first_at is None:
            watch.first_at, watch.first_committed = now, watch.committed
            meter.start()
        # Drained: every event committed and every tier change published (the relay).
        if watch.committed >= loaded.total and not await conn.fetchval(BACKLOG_QUERY):
            return watch, time.perf_counter()
        if window_s and watch.first_at is not None and now - watch.first_at >= window_s:
            return watch, now
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"scorer did not drain {loaded.total} events in {timeout_s}s")


async def run_scorer(
    infra: Infra, loaded: Loaded, *, partitions: int, workdir: Path, timeout_s: float,
    profile_to: Path | None = None, window_s: float | None = None, processes: int = 1,
) -> ScorerRun:  # fmt: skip
    """Start `processes` scorers (one consumer group) on a fresh database and time them
    draining `loaded` (or only the first `window_s` seconds after the first commit: enough
    for a profile of the first process). CPU and RSS are the group's sums."""
    async with fresh_database(infra.pg_server_url, migrate=True) as database_url:
        env = service_env(
            infra, namespace=loaded.namespace, database_url=database_url, partitions=partitions
        )
        # A group of its own per drain: tansu was seen never answering a two-member group's
        # join after an earlier two-member generation of the same group had left.
        group_id = env["SCORER_GROUP_ID"] = unique_name("bench-scorer")
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            launched = time.perf_counter()
            async with running_all(
                [Service("scorer", env, workdir) for _ in range(processes)]
            ) as group:
                meter = CpuMeter(
                    {**{f"scorer{i}": s.pid for i, s in enumerate(group)},
                     "postgres": infra.postgres_pid, "broker": infra.broker_pid}
                )  # fmt: skip
                profiler = Profiler(group[0].pid, profile_to) if profile_to else None
                if profiler:
                    profiler.start()
                try:
                    watch, ended = await _drain(
                        conn, group, loaded, meter, timeout_s, window_s, group_id
                    )
                    cpu = group_cpu(meter.read())
                finally:
                    if profiler:
                        await profiler.stop()
                backlog = await conn.fetchval(BACKLOG_QUERY)
                batches = await batch_stats(group[0].url)
        finally:
            await conn.close()
    assert watch.first_at is not None
    if watch.committed == watch.first_committed:  # the timing starts after the first batch
        raise RuntimeError(
            f"the scorer committed all {watch.committed} events in its first batch, so no "
            "drain was left to time: give --events several times SCORER_BATCH_MAX_RECORDS"
        )
    return ScorerRun(
        events=watch.committed - watch.first_committed,
        seconds=ended - watch.first_at,
        startup_s=watch.first_at - launched,
        peak_rss_mb=watch.peak_rss / 2**20,
        cpu_s=cpu,
        outbox_backlog=int(backlog or 0),
        batches=batches,
    )


def group_cpu(cpu: dict[str, float]) -> dict[str, float]:
    """The scorer processes' CPU summed under "scorer" (each also kept on its own)."""
    scorers = {name: s for name, s in cpu.items() if name.startswith("scorer")}
    return {**cpu, "scorer": round(sum(scorers.values()), 2)}


async def batch_stats(url: str) -> dict[str, float]:
    """Batches the scorer committed, their mean size and duration, from its /metrics."""
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            text = (await http.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(BATCH_METRIC) and sample.name.endswith(("_sum", "_count")):
                sums[sample.name.removeprefix(BATCH_METRIC)] = sample.value
    count = sums.get("size_events_count", 0.0)
    if not count:
        return {}
    return {
        "count": count,
        "mean_events": round(sums.get("size_events_sum", 0.0) / count, 1),
        "mean_seconds": round(sums.get("duration_seconds_sum", 0.0) / count, 4),
    }
