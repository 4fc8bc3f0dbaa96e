"""The HTTP phases: ingest throughput and end-to-end latency, against real service processes,
driven by the load generator in its own process."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.cpu import CpuMeter
from bench.events import Event
from bench.infra import (
    API_KEY,
    Infra,
    Service,
    append_to,
    fresh_database,
    running,
    running_all,
    service_env,
    unique_name,
)
from bench.profiling import Profiler
from bench.scorer_phase import committed_offsets, group_cpu
from bench.settings import REPO_ROOT
from shared.db import asyncpg_dsn
from shared.topics import Topics


@dataclass(frozen=True)
class PhaseRun:
    """What the load generator measured, plus CPU seconds of the processes involved."""

    result: dict[str, Any]
    cpu_s: dict[str, float]


async def loadgen(job: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Run `python -m bench.loadgen` with `job`; its last stdout line is the result."""
    with append_to(log_path) as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", json.dumps(job),
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
        )  # fmt: skip
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}); see {log_path}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def write_bodies(events: Sequence[Event], batch: int, path: Path) -> int:
    """Batch request bodies, one per line, as upstream systems would send them."""
    with path.open("w") as out:
        for start in range(0, len(events), batch):
            chunk = [
                e.model_dump(mode="json", exclude_none=True) for e in events[start : start + batch]
            ]
            out.write(json.dumps({"events": chunk}) + "\n")
    return len(events)


async def run_ingest(
    infra: Infra, bodies: Path, *, runs: int, partitions: int, concurrency: int, workdir: Path,
    profile_to: Path | None,
) -> list[PhaseRun]:  # fmt: skip
    """Time `runs` posts of every body (and one profiled extra run when asked)."""
    env = service_env(
        infra, namespace=unique_name("bi"), database_url=infra.pg_server_url, partitions=partitions
    )
    job = {"mode": "ingest", "api_key": API_KEY, "bodies_path": str(bodies),
           "concurrency": concurrency}  # fmt: skip
    results: list[PhaseRun] = []
    async with running(Service("ingest", env, workdir)) as ingest:
        job["url"] = ingest.url
        for _ in range(runs):
            meter = CpuMeter({"ingest": ingest.pid, "broker": infra.broker_pid})
            meter.start()
            result = await loadgen(job, workdir / "loadgen.log")
            results.append(PhaseRun(result, meter.read()))
        if profile_to is not None:
            profiler = Profiler(ingest.pid, profile_to)
            profiler.start()
            try:
                await loadgen(job, workdir / "loadgen.log")
            finally:
                await profiler.stop()
    return results


async def run_e2e(
    infra: Infra, *, runs: int, partitions: int, rate: float, seconds: float, batch: int,
    workdir: Path, new_share: float = 1.0, population: int = 0, seed: int = 7,
    scorers: int = 1, catch_up_s: float = 180.0,
) -> tuple[list[PhaseRun], float]:  # fmt: skip
    """Ingest and `scorers` scorer processes (one consumer group) on fresh topics and
    database; `runs` timed open-loop runs, each started only once the scorers have caught
    up with the one before.

    Returns the runs and the scorers' summed RSS (MB) at the end.
    """
    namespace = unique_name("be")
    results: list[PhaseRun] = []
    async with fresh_database(infra.pg_server_url, migrate=True) as database_url:
        env = service_env(
            infra, namespace=namespace, database_url=database_url, partitions=partitions
        )
        # A group of its own per series (see bench/scorer_phase.py: tansu and repeated joins).
        group_id = env["SCORER_GROUP_ID"] = unique_name("bench-e2e")
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            async with (
                running_all([Service("scorer", env, workdir) for _ in range(scorers)]) as group,
                running(Service("ingest", env, workdir)) as ingest,
            ):
                job = {
                    "mode": "e2e", "url": ingest.url, "api_key": API_KEY,
                    "bootstrap": infra.bootstrap, "topic": Topics(namespace).tier_changed,
                    "partitions": partitions, "rate": rate, "seconds": seconds, "batch": batch,
                    "new_share": new_share, "population": population, "seed": seed,
                }  # fmt: skip
                posted = 0
                for index in range(runs):
                    meter = CpuMeter(
                        {"ingest": ingest.pid, **{f"scorer{i}": s.pid for i, s in enumerate(group)},
                         "postgres": infra.postgres_pid, "broker": infra.broker_pid}
                    )  # fmt: skip
                    meter.start()
                    log = workdir / "e2e.log"
                    result = await loadgen({**job, "prefix": f"{namespace}r{index}"}, log)
                    results.append(PhaseRun(result, group_cpu(meter.read())))
                    posted += result["accepted_events"]
                    await _caught_up(conn, group_id, posted, catch_up_s)
                rss = sum(s.process().memory_info().rss for s in group) / 2**20
        finally:
            await conn.close()
    return results, rss


async def _caught_up(
    conn: asyncpg.Connection[asyncpg.Record], group_id: str, events: int, within_s: float
) -> None:
    """Wait until the scorers have committed `events` events (the next run starts clean)."""
    deadline = time.monotonic() + within_s
    while await committed_offsets(conn, group_id) < events:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scorer did not catch up with {events} events in {within_s}s")
        await asyncio.sleep(0.2)
