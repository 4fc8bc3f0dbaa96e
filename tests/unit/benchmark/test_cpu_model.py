"""`python -m bench.cpu_model` runs the scorer's real decode, fold and evaluation."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench import cpu_model
from bench.cpu_model import NOW, _apply, _records, run
from bench.events import first_purchases, returning_customers
from services.scorer.evaluation import CustomerRecord, Scoring
from shared.domain.rules import default_rules_path, load_rules


def test_a_mixed_batch_updates_each_customer_once_and_classifies_the_new_ones() -> None:
    scoring = Scoring(load_rules(default_rules_path()))
    by_id: dict[str, CustomerRecord] = {}
    _apply(_records(first_purchases("p", 30, at=NOW)), by_id, scoring, NOW)
    mixed = first_purchases("n", 5, at=NOW) + returning_customers(
        "p", 30, 20, at=NOW, seed=1, event_prefix="x"
    )
    rows = _apply(_records(mixed), by_id, scoring, NOW)
    customers = {str(event["customer_id"]) for event in mixed}
    # One customer row each, three first tier changes for each new customer (and a
    # lifecycle change for a returning customer's second purchase).
    assert rows >= len(customers) + 3 * 5
    new = [by_id[c] for c in customers if c.startswith("n-")]
    assert len(new) == 5 and all(r.classes is not None and r.version == 1 for r in new)


def test_the_timed_batches_apply_their_events_and_report_cpu_per_event() -> None:
    timed = run(population=40, batches=2, batch=20)
    # Two new customers a batch (1 event in 10), each saved once, by the timed batches.
    arrivals = {c: v for c, v in timed.versions.items() if not c.startswith("m-p-")}
    assert arrivals == {f"m-n{b}-c{i}": 1 for b in range(2) for i in range(2)}
    # The population, saved once by the setup, again by each timed batch that had its events.
    population = [v for c, v in timed.versions.items() if c.startswith("m-p-")]
    assert len(population) == 40 and min(population) >= 1
    rewritten = sum(v - 1 for v in population)
    assert rewritten >= 2  # 18 returning events a batch: at least one customer each
    # A row per customer saved, and three first tier changes per new customer.
    assert timed.rows >= rewritten + len(arrivals) + 3 * len(arrivals)
    assert timed.cpu_per_event > 0


def test_garbage_collection_is_enabled_again_when_a_timed_batch_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(records: Any, by_id: Any, scoring: Any, now: datetime) -> int:
        if now >= NOW:  # the timed batches, not the setup
            raise ValueError("a batch failed")
        return _apply(records, by_id, scoring, now)

    monkeypatch.setattr(cpu_model, "_apply", failing)
    assert gc.isenabled()
    try:
        with pytest.raises(ValueError, match="a batch failed"):
            run(population=10, batches=1, batch=10)
        enabled = gc.isenabled()
    finally:
        gc.enable()  # for the tests after this one, whatever happened
    assert enabled


def test_counting_instructions_without_valgrind_says_how_to_get_it(tmp_path: Path) -> None:
    # `make bench-cpu` ended in a FileNotFoundError traceback.
    done = subprocess.run(
        [sys.executable, "-m", "bench.cpu_model", "--callgrind"],
        env={**os.environ, "PATH": str(tmp_path)},  # no valgrind on it
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [cpu_model.VALGRIND_MISSING]
    assert "apt-get install valgrind" in done.stderr
