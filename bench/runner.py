"""The benchmark's phases in order, each run `settings.runs` times into a `Results`."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from rich.console import Console

from bench.cpu import CpuMeter
from bench.events import (
    Event,
    distinct_customers,
    event_mix,
    recent_end,
    simulated_events,
    to_records,
)
from bench.facts import machine_facts
from bench.infra import Infra, fresh_database, infrastructure, unique_name
from bench.kafka_raw import DECODERS, Loaded, consume, kafka_settings, produce
from bench.pg_raw import merge
from bench.pipeline import PhaseRun, run_e2e, run_ingest, write_bodies
from bench.profiling import py_spy, summarise
from bench.report import E2E_P99_TARGET_MS, Results
from bench.scorer_phase import run_scorer
from bench.settings import BenchSettings
from shared.db import asyncpg_dsn


class Bench:
    """One benchmark session on one broker and one Postgres server."""

    def __init__(
        self, settings: BenchSettings, infra: Infra, workdir: Path, console: Console
    ) -> None:
        self.s, self.infra, self.workdir, self.console = settings, infra, workdir, console
        self.results = Results()
        self.kafka = kafka_settings(infra.bootstrap, settings.partitions)

    def say(self, text: str) -> None:
        self.console.print(f"[cyan]{time.strftime('%H:%M:%S')}[/cyan] {text}")

    def _meter(self) -> CpuMeter:
        return CpuMeter({"bench": os.getpid(), "broker": self.infra.broker_pid})

    async def raw_produce(self, events: Sequence[Event]) -> Loaded:
        """Time the producer alone; the first run's topics feed the later phases."""
        records = to_records(events)
        runs = self.s.runs if self.s.wants("raw_produce") else 1
        loaded: Loaded | None = None
        for _ in range(runs):
            meter = self._meter()
            meter.start()
            seconds, this = await produce(self.kafka, unique_name("br"), records)
            cpu = meter.read()
            loaded = loaded or this
            if self.s.wants("raw_produce"):
                self.results.add("raw_produce_events_per_s", len(records) / seconds,
                                 per_cpu=len(records) / _cpu(cpu, "bench", "broker"))  # fmt: skip
                self.results.detail("raw_produce", {"seconds": seconds, "cpu_s": cpu})
        assert loaded is not None
        return loaded

    async def raw_consume(self, loaded: Loaded) -> None:
        for _ in range(self.s.runs):
            for name, decode in DECODERS.items():
                meter = self._meter()
                meter.start()
                seconds = await consume(self.kafka, loaded, decode, self.s.merge_batch())
                cpu = meter.read()
                figure = (
                    "raw_consume_events_per_s"
                    if name == "pydantic"
                    else "raw_consume_json_events_per_s"
                )
                self.results.add(figure, loaded.total / seconds,
                                 per_cpu=loaded.total / _cpu(cpu, "bench", "broker"))  # fmt: skip
                self.results.detail(
                    "raw_consume", {"decode": name, "seconds": seconds, "cpu_s": cpu}
                )

    async def raw_pg_merge(self, events: Sequence[Event]) -> None:
        async with fresh_database(self.infra.pg_server_url) as database_url:
            for _ in range(self.s.runs):
                conn = await asyncpg.connect(asyncpg_dsn(database_url))
                try:  # the backend's CPU is read while it still lives
                    meter = CpuMeter({"bench": os.getpid(), "postgres": self.infra.postgres_pid})
                    meter.start()
                    seconds = await merge(conn, events, self.s.merge_batch())
                    cpu = meter.read()
                finally:
                    await conn.close()
                self.results.add("raw_pg_merge_events_per_s", len(events) / seconds,
                                 per_cpu=len(events) / _cpu(cpu, "bench", "postgres"))  # fmt: skip
                self.results.detail("raw_pg_merge", {"seconds": seconds, "cpu_s": cpu})

    async def ingest(self, events: Sequence[Event]) -> None:
        bodies = self.workdir / "bodies.jsonl"
        write_bodies(events[: self.s.ingest_events], self.s.ingest_batch, bodies)
        profile = self.workdir / "ingest.pyspy" if self._profiling() else None
        runs = await run_ingest(
            self.infra, bodies, runs=self.s.runs, partitions=self.s.partitions,
            concurrency=self.s.ingest_concurrency, workdir=self.workdir, profile_to=profile,
        )  # fmt: skip
        for run in runs:
            r = run.result
            if r["errors"]:
                self.results.notes.append(
                    f"ingest run answered {r['errors']} non-202 requests; their events are not"
                    " counted"
                )
            accepted = r["accepted_events"]  # in 202 answers only
            self.results.add("ingest_events_per_s", accepted / r["seconds"],
                             per_cpu=accepted / _cpu(run.cpu_s, "ingest", "broker"))  # fmt: skip
            self.results.detail("ingest", {**r, "cpu_s": run.cpu_s})
        self._add_profile("ingest", profile)

    async def scorer(self, loaded: Loaded) -> None:
        profiled = [False] * self.s.runs + ([True] if self._profiling() else [])
        for with_profile in profiled:
            out = self.workdir / "scorer.pyspy" if with_profile else None
            run = await run_scorer(
                self.infra, loaded, partitions=self.s.partitions, workdir=self.workdir,
                timeout_s=self.s.scorer_timeout_s, profile_to=out,
                window_s=self.s.profile_s if with_profile else None,
            )  # fmt: skip
            detail = {**run.__dict__, "rate": run.rate, "profiled": with_profile}
            self.results.detail("scorer", detail)
            if with_profile:
                self._add_profile("scorer", out)
                continue
            self.results.add("scorer_events_per_s", run.rate,
                             per_cpu=run.events / _cpu(run.cpu_s, *SCORER_CPU))  # fmt: skip
            self.results.add("scorer_startup_s", run.startup_s)
            self.results.add("scorer_rss_mb", run.peak_rss_mb)
        if self.s.scorer_processes > 1:
            await self._scorer_group(loaded)

    async def _scorer_group(self, loaded: Loaded) -> None:
        """The same drain by a consumer group of `scorer_processes` scorers."""
        for _ in range(self.s.runs):
            run = await run_scorer(
                self.infra, loaded, partitions=self.s.partitions, workdir=self.workdir,
                timeout_s=self.s.scorer_timeout_s, processes=self.s.scorer_processes,
            )  # fmt: skip
            self.results.detail("scorer_group", {**run.__dict__, "rate": run.rate})
            self.results.add("scorer_group_events_per_s", run.rate,
                             per_cpu=run.events / _cpu(run.cpu_s, *SCORER_CPU))  # fmt: skip
            self.results.add("scorer_group_rss_mb", run.peak_rss_mb)

    async def e2e(self) -> None:
        await self._e2e("e2e", self.s.e2e_new_share, self.s.e2e_population)
        if self.s.e2e_storm:
            await self._e2e("e2e_storm", 1.0, 0)
        if self.s.ladder():
            await self._sustained_rate(self.s.ladder())

    async def _sustained_rate(self, rates: list[float]) -> None:
        """The mixed stream at rising rates, one run each, until p99 misses the target."""
        sustained = 0.0
        for rate in rates:
            self.console.print(f"[dim]  sustained-rate search: {rate:,.0f} events/s[/dim]")
            run, _ = await self._run_e2e(
                rate=rate, new_share=self.s.e2e_new_share, population=self.s.e2e_population
            )
            r = run.result
            # Held: the generator kept the rate, every POST was taken, and every probe arrived
            # before the deadline.
            held = (r["achieved_rate"] >= 0.98 * rate and r["matched"] == r["probes"]
                    and not r["post_errors"])  # fmt: skip
            met = held and r["p99_ms"] <= E2E_P99_TARGET_MS
            self.results.detail("e2e_ladder", {
                "rate": rate, "met": met, "achieved_rate": r["achieved_rate"],
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "to_decision_p99_ms": r["to_decision_p99_ms"],
                "to_publish_p99_ms": r["to_publish_p99_ms"], "cpu_s": run.cpu_s,
            })  # fmt: skip
            if not met:
                break
            sustained = rate
        self.results.add("e2e_sustained_rate_events_per_s", sustained)

    async def _e2e(self, name: str, new_share: float, population: int) -> None:
        """One series of e2e runs, each on fresh services; figures named `{name}_*`."""
        for _ in range(self.s.runs):
            run, rss = await self._run_e2e(
                rate=self.s.e2e_rate, new_share=new_share, population=population
            )
            r = run.result
            self.results.add(f"{name}_rate_events_per_s", r["achieved_rate"])
            self.results.add(f"{name}_p50_ms", r["p50_ms"])
            self.results.add(f"{name}_p99_ms", r["p99_ms"])
            self.results.add(f"{name}_http_p99_ms", r["http_p99_ms"])
            self.results.add(f"{name}_to_decision_p99_ms", r["to_decision_p99_ms"])
            self.results.add(f"{name}_to_publish_p99_ms", r["to_publish_p99_ms"])
            self.results.detail(name, {**r, "cpu_s": run.cpu_s, "scorer_rss_mb_after": rss})
            if r["achieved_rate"] < 0.95 * self.s.e2e_rate:
                self.results.notes.append(
                    f"{name}: the load generator held only {r['achieved_rate']:,.0f} of "
                    f"{self.s.e2e_rate:,.0f} events/s (its process was short of CPU)"
                )
            if r["matched"] < r["probes"]:
                self.results.incomplete.add(f"{name}_p99_ms")
                self.results.notes.append(
                    f"{name}: {r['probes'] - r['matched']} of {r['probes']} probes had no tier "
                    "change 30 s after the last POST; they count with the latency they had by "
                    "then, so that run's percentiles are lower bounds, and its target is missed"
                )
            if r["post_errors"]:
                self.results.incomplete.add(f"{name}_p99_ms")
                self.results.notes.append(
                    f"{name}: {r['post_errors']} POSTs were refused; the target is missed"
                )

    async def _run_e2e(
        self, *, rate: float, new_share: float, population: int
    ) -> tuple[PhaseRun, float]:
        """`run_e2e` with this bench's infrastructure and settings."""
        return await run_e2e(
            self.infra, partitions=self.s.partitions, rate=rate,
            seconds=self.s.e2e_seconds, batch=self.s.e2e_batch, workdir=self.workdir,
            new_share=new_share, population=population, seed=self.s.seed,
            scorers=self.s.e2e_scorers,
        )  # fmt: skip

    def _profiling(self) -> bool:
        if self.s.profile and py_spy() is None:
            self.results.notes.append("profile asked for, but py-spy is not installed")
        return self.s.profile and py_spy() is not None

    def _add_profile(self, service: str, path: Path | None) -> None:
        if path is None:
            return
        if path.exists():
            self.results.profiles[service] = summarise(path, top=25)
        else:
            self.results.notes.append(f"py-spy wrote no {service} profile (ptrace not allowed?)")


# The processes whose CPU a scorer drain costs: the scorers, Postgres, the broker.
SCORER_CPU = ("scorer", "postgres", "broker")


def _cpu(cpu: dict[str, float], *processes: str) -> float:
    """The CPU seconds of `processes` together (never 0: a rate divides by it). An external
    broker or Postgres (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL) is not measured: left out."""
    return max(sum(cpu.get(name, 0.0) for name in processes), 0.01)


def _notes(settings: BenchSettings, events: Sequence[Event]) -> list[str]:
    notes = [
        f"events: {len(events):,} simulated (cli.simulation, seed {settings.seed}) over "
        f"{distinct_customers(events):,} customers; mix {event_mix(events)}",
        "scorer_events_per_s: the real scorer process (python -m services.scorer, full "
        "exactly-once path) on a fresh database, timed from its first committed batch to "
        "the offsets stored in scorer.consumer_offset reaching the end of every partition "
        "with every tier change published (the outbox empty); "
        "start-up and group join (scorer_startup_s) and the first batch's events are excluded",
        f"scorer_group_events_per_s: the same drain by {settings.scorer_processes} scorer "
        "processes in one consumer group (the partitions shared between them), as a "
        "deployment with one scorer per core runs; CPU and RSS are the group's sums",
        "raw_consume_events_per_s decodes with pydantic (shared.contracts.parse_event, the "
        "scorer's decode); raw_consume_json_events_per_s with json.loads only; polls of "
        f"{settings.merge_batch()} records (the scorer's batch size)",
        f"raw_pg_merge: batches of {settings.merge_batch()} events (the scorer's batch size) "
        "aggregated per customer in Python (inside the timing), COPY into a temp table + one "
        "INSERT ... ON CONFLICT merge, one transaction per batch",
        f"ingest: python -m services.ingest, batches of {settings.ingest_batch} from a separate "
        f"load-generator process (aiohttp, {settings.ingest_concurrency} requests in flight), "
        "timed from the first POST to the last 202 (broker acks included)",
        f"e2e: {settings.e2e_rate:,.0f} events/s POSTed open-loop in batches of "
        f"{settings.e2e_batch} for {settings.e2e_seconds:g} s per run, each run on fresh "
        "services, topics and database; "
        f"{settings.e2e_new_share:.0%} of them first purchases of fresh customers (the probes "
        "whose latency is measured), the rest logins (4 in 5) and repeat purchases of "
        f"{settings.e2e_population:,} customers created before the run; latency from the "
        "POST's moment on the open-loop schedule (a POST sent late counts its lateness) to "
        "the probe customer's first record on the tier-changed topic; "
        "http = POST to 202, to_decision = POST to the scorer's emitted_at (its clock when the "
        "batch that decided began), to_publish = POST to the tier-changed record's timestamp "
        "(the relay's clock as it wrote the record, after the batch committed)",
        "e2e_storm: the same with every event a first purchase of a new customer (a sign-up "
        "storm; each event makes three tier changes)",
        "per CPU-s: events per CPU second of every process doing the phase's work: the bench "
        "client and the broker for raw Kafka, the bench client and Postgres for the raw "
        "merge, ingest and the broker for ingest (not the load generator), the scorer "
        "processes, Postgres and the broker for the scorer (what the exactly-once path costs "
        "the machine)",
    ]
    if settings.ladder():
        rates = ", ".join(f"{rate:,.0f}" for rate in settings.ladder())
        notes.append(
            f"e2e_sustained_rate_events_per_s: the mixed stream offered at {rates} events/s, "
            "one run each on fresh services, up to the first rate whose p99 misses 250 ms (or "
            "whose probes did not all arrive, or whose rate the generator could not hold); the "
            "highest rate that met it (0: none)"
        )
    return notes


async def run_bench(settings: BenchSettings, console: Console) -> tuple[Results, dict[str, Any]]:
    """Every asked-for phase on fresh infrastructure; returns the results and their document."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tierstream-bench-"))
    console.print(f"[dim]work directory (service logs, profiles): {workdir}[/dim]")
    with infrastructure(workdir) as infra:
        bench = Bench(settings, infra, workdir, console)
        machine = await machine_facts(infra)
        bench.say(f"broker: {infra.broker_kind}; postgres: {machine['postgres']['version']}")
        events = simulated_events(
            seed=settings.seed, customers=settings.customers, count=settings.events,
            end=recent_end(),
        )  # fmt: skip
        bench.say(f"{len(events):,} events over {distinct_customers(events):,} customers")
        await _phases(bench, events)
    if not settings.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)  # kept when a phase failed: logs are there
    machine["load_average_at_end"] = [round(x, 2) for x in psutil.getloadavg()]
    machine["bench_duration_s"] = round(time.monotonic() - started, 1)
    bench.results.notes.extend(_notes(settings, events))
    bench.results.notes.append(
        f"shared machine: load average {machine['load_average_at_start']} at start, "
        f"{machine['load_average_at_end']} at end (other work competes for the 2 cores)"
    )
    return bench.results, bench.results.document(machine, settings.model_dump(mode="json"))


async def _phases(bench: Bench, events: Sequence[Event]) -> None:
    s = bench.s
    loaded: Loaded | None = None
    if s.wants("raw_produce") or s.wants("raw_consume") or s.wants("scorer"):
        bench.say("raw produce (and loading the scorer's topics)")
        loaded = await bench.raw_produce(events)
    if s.wants("raw_consume") and loaded:
        bench.say("raw consume")
        await bench.raw_consume(loaded)
    if s.wants("raw_pg_merge"):
        bench.say("raw Postgres merge")
        await bench.raw_pg_merge(events)
    if s.wants("scorer") and loaded:
        bench.say("scorer")
        await bench.scorer(loaded)
    if s.wants("ingest"):
        bench.say("ingest")
        await bench.ingest(events)
    if s.wants("e2e"):
        bench.say("end to end")
        await bench.e2e()
