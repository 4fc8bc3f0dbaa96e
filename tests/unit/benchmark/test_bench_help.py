"""`python -m bench --help`, quoted in docs/BENCHMARKS.md, reads without the code beside it."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.settings import SCORER_BATCH, BenchSettings


def bench_help() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], env={**os.environ, "COLUMNS": "100"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return " ".join(done.stdout.split())


def test_the_help_says_what_the_benchmark_does_without_internal_references() -> None:
    # It said "(default factory: BenchSettings.<lambda>)", "(default: null)" and "defaults
    # meet issue 8".
    shown = bench_help()
    for internal in ("<lambda>", "default factory", "null", "issue 8"):
        assert internal not in shown
    assert "Measures Tierstream's throughput and latency on this machine" in shown
    assert "Every option is also a BENCH_* variable" in shown
    cores = os.cpu_count() or 1
    assert f"default is this machine's cores. (default: {cores})" in shown
    assert f"(default: {SCORER_BATCH})" in shown


def test_the_defaults_are_the_machine_s_cores_and_the_scorer_s_batch() -> None:
    settings = BenchSettings()
    assert settings.scorer_processes == (os.cpu_count() or 1)
    assert settings.merge_batch() == SCORER_BATCH
    assert BenchSettings(batch=500).merge_batch() == 500
