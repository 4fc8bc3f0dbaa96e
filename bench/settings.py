"""What the benchmark runs: sizes, repetitions and phases, from `BENCH_*` variables or flags."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.scorer.settings import ScorerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
PHASES = ("raw_produce", "raw_consume", "raw_pg_merge", "ingest", "scorer", "e2e")
# Defaults as values, not factories or None: `--help` printed "(default factory:
# BenchSettings.<lambda>)" and "(default: null)" for them.
CORES = os.cpu_count() or 1
SCORER_BATCH = int(ScorerSettings.model_fields["batch_max_records"].default)


# Printed as written (argparse keeps a description's line breaks here): wrapped for 80 columns.
HELP = """\
Measures Tierstream's throughput and latency on this machine, next to the machine's
raw limits (Kafka produce and consume, Postgres merge), prints a table and writes the
figures to --output. With the defaults it takes 5-7 minutes on 2 cores.

Every option is also a BENCH_* variable: --e2e-rate 2000 or BENCH_E2E_RATE=2000.
docs/BENCHMARKS.md explains each phase and figure."""


class BenchSettings(BaseSettings):
    """What the benchmark runs; `python -m bench --help` shows HELP and each option."""

    model_config = SettingsConfigDict(
        env_prefix="BENCH_", frozen=True, extra="ignore", cli_kebab_case=True,
        cli_prog_name="python -m bench", cli_implicit_flags=True,
        json_schema_extra={"description": HELP},  # the help's text, before the class docstring
    )  # fmt: skip

    runs: int = Field(3, ge=1, description="Timed runs of each phase (median, min, max).")
    seed: int = Field(7, description="Seed of the simulated population.")
    phases: str = Field(",".join(PHASES), description="Comma-separated phases to run.")
    events: int = Field(
        200_000,
        ge=1000,
        description="Mixed events of the scorer and raw phases (at least this many).",
    )
    customers: int = Field(20_000, ge=1, description="Customers those events belong to.")
    partitions: int = Field(6, ge=1, description="Partitions per topic (production default).")
    scorer_processes: int = Field(
        CORES, ge=1,
        description="Scorer processes of the group run (scorer_group_*; 1 skips it); the "
        "default is this machine's cores.",
    )  # fmt: skip
    batch: int = Field(
        SCORER_BATCH, ge=1,
        description="Events per raw Postgres merge transaction and raw consumer poll; the "
        "default is the scorer's (SCORER_BATCH_MAX_RECORDS' default).",
    )  # fmt: skip
    ingest_events: int = Field(100_000, ge=1000, description="Events posted per ingest run.")
    ingest_batch: int = Field(1000, ge=1, description="Events per ingest HTTP request.")
    ingest_concurrency: int = Field(4, ge=1, description="Ingest requests in flight.")
    e2e_rate: float = Field(5000.0, gt=0, description="Events per second offered end to end.")
    e2e_seconds: float = Field(5.0, gt=0, description="Length of each end-to-end run.")
    e2e_batch: int = Field(100, ge=1, description="Events per end-to-end HTTP request.")
    e2e_scorers: int = Field(
        1, ge=1,
        description="Scorer processes (one consumer group) behind ingest in the e2e runs. "
        "More than one stalls the embedded broker under the full e2e series (see "
        "docs/PERFORMANCE.md); try it against a real Kafka.",
    )  # fmt: skip
    e2e_new_share: float = Field(
        0.1, gt=0, le=1,
        description="Share of e2e events that are first purchases of new customers (the "
        "measured probes); the rest are logins and purchases of existing customers.",
    )  # fmt: skip
    e2e_population: int = Field(
        5000, ge=1, description="Existing customers created before each e2e run."
    )
    e2e_storm: bool = Field(
        True, description="Also run e2e with every event a new customer (e2e_storm_* figures)."
    )
    e2e_ladder: str = Field(
        "1000,2000,3000,4000,5000,6000,7000,8000,10000",
        description="Offered rates (events/s, ascending) tried once each on the mixed stream, "
        "up to the first whose p99 misses the 250 ms target; the highest that meets it is "
        "e2e_sustained_rate_events_per_s. Empty skips the search.",
    )
    scorer_timeout_s: float = Field(600.0, gt=0, description="Longest a scorer drain may take.")
    profile: bool = Field(True, description="Profile one extra scorer and ingest run (py-spy).")
    profile_s: float = Field(20.0, gt=0, description="Seconds of the profiled scorer run.")
    keep_workdir: bool = Field(False, description="Keep service logs and profiles afterwards.")
    output: Path = Field(REPO_ROOT / "bench-results.json", description="Results file.")

    @field_validator("phases")
    @classmethod
    def _known_phases(cls, value: str) -> str:
        unknown = {p.strip() for p in value.split(",")} - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
        return value

    @field_validator("e2e_ladder")
    @classmethod
    def _ascending_rates(cls, value: str) -> str:
        try:
            rates = [float(part) for part in value.split(",") if part.strip()]
        except ValueError as exc:
            raise ValueError(f"not a comma-separated list of rates: {value!r}") from exc
        if any(rate <= 0 for rate in rates) or rates != sorted(set(rates)):
            raise ValueError(f"rates must be positive and ascending: {value!r}")
        return value

    def ladder(self) -> list[float]:
        """The rates of the sustained-rate search (may be empty)."""
        return [float(part) for part in self.e2e_ladder.split(",") if part.strip()]

    def merge_batch(self) -> int:
        """Events per raw merge transaction: as asked, else the scorer's batch size."""
        return self.batch

    def wants(self, phase: str) -> bool:
        """Whether `phase` was asked for."""
        return phase in {p.strip() for p in self.phases.split(",")}
