"""The HTTP phases: ingest throughput and end-to-end latency, against real service processes,
driven by the load generator in its own process."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from bench.scorer_phase import group_cpu
from bench.settings import REPO_ROOT
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
    infra: Infra, *, partitions: int, rate: float, seconds: float, batch: int, workdir: Path,
    new_share: float = 1.0, population: int = 0, seed: int = 7, scorers: int = 1,
) -> tuple[PhaseRun, float]:  # fmt: skip
    """One timed open-loop run against ingest and `scorers` scorer processes (one consumer
    group), all started for it on fresh topics and a fresh database.

    Fresh for every run because the embedded broker's cost per fetch grows with what a
    partition already holds (docs/BENCHMARKS.md, "The embedded broker"): a second
    run on the same topics measured the broker's storage more than Tierstream.

    Returns the run and the scorers' summed RSS (MB) at its end.
    """
    namespace = unique_name("be")
    async with fresh_database(infra.pg_server_url, migrate=True) as database_url:
        env = service_env(
            infra, namespace=namespace, database_url=database_url, partitions=partitions
        )
        # A group of its own per run (see bench/scorer_phase.py: tansu and repeated joins).
        env["SCORER_GROUP_ID"] = unique_name("bench-e2e")
        async with (
            running_all([Service("scorer", env, workdir) for _ in range(scorers)]) as group,
            running(Service("ingest", env, workdir)) as ingest,
        ):
            job = {
                "mode": "e2e", "url": ingest.url, "api_key": API_KEY,
                "bootstrap": infra.bootstrap, "topic": Topics(namespace).tier_changed,
                "partitions": partitions, "rate": rate, "seconds": seconds, "batch": batch,
                "new_share": new_share, "population": population, "seed": seed,
                "prefix": namespace,
            }  # fmt: skip
            meter = CpuMeter(
                {"ingest": ingest.pid, **{f"scorer{i}": s.pid for i, s in enumerate(group)},
                 "postgres": infra.postgres_pid, "broker": infra.broker_pid}
            )  # fmt: skip
            meter.start()
            result = await loadgen(job, workdir / "e2e.log")
            run = PhaseRun(result, group_cpu(meter.read()))
            rss = sum(s.process().memory_info().rss for s in group) / 2**20
    return run, rss
