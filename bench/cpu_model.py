"""The scorer's per-event Python work on an end-to-end-shaped stream, without I/O.

`python -m bench.cpu_model` decodes records as the consumer gets them, folds and
evaluates them in batches (`fold_batch`) and builds the rows the store would write, for
a population that made a first purchase three days ago and then logs in and buys again
while new customers arrive (the e2e phase's mix: 1 in 10 events a new customer). It
prints the process CPU per event of the timed batches.

Run under valgrind's callgrind with `--batches 0` and with `--batches N`, the difference
of the two instruction counts over N x batch events is the instructions per event: the
same count for the same code whatever else the machine is doing, which this machine's
clock is not (docs/BENCHMARKS.md, "Instructions per event").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from rich.console import Console

from bench.events import first_purchases, returning_customers
from services.scorer.consumer import trace_lookup
from services.scorer.dead_letters import decode
from services.scorer.evaluation import CustomerRecord, Scoring, fold_batch, saved_records
from shared.domain.rules import default_rules_path, load_rules
from shared.gcpause import gc_paused

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # fixed: the same work on every run


class _Record(NamedTuple):
    """What the consumer reads of a Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp: int


def _records(events: Sequence[dict[str, object]]) -> list[_Record]:
    # The CloudEvents headers ingest writes (no trace context: the bench sends none).
    headers = [(name, b"x") for name in ("ce_specversion", "ce_id", "ce_source", "ce_type",
                                         "ce_time", "content-type")]  # fmt: skip
    return [
        _Record("events", 0, i, b"", json.dumps({**e, "source": "bench"}).encode(), headers, 0)
        for i, e in enumerate(events)
    ]


def _apply(
    records: Sequence[_Record], by_id: dict[str, CustomerRecord], scoring: Scoring, now: datetime
) -> int:
    """decode -> fold_batch -> row tuples -> records as committed; returns the rows built."""
    decoded, poison = decode(records)
    if poison:
        raise ValueError(f"the model's own events did not decode: {poison[0].error}")
    events = [event for event, _ in decoded]
    for event in events:
        if event.customer_id not in by_id:
            by_id[event.customer_id] = CustomerRecord.empty(event.customer_id, 0)
    mine = list({e.customer_id: by_id[e.customer_id] for e in events}.values())
    outcome = fold_batch(mine, events, scoring, now=now, trace_of=trace_lookup(decoded))
    rows: list[tuple[Any, ...]] = [u.as_row() for u in outcome.updates]
    rows += [c.as_row() for c in outcome.changes]
    by_id.update((r.customer_id, r) for r in saved_records(mine, outcome))
    return len(rows)


class Timed(NamedTuple):
    """What the timed batches did, and the process CPU they took."""

    cpu_per_event: float  # seconds of process CPU per event
    rows: int  # customer rows and tier changes the timed batches built
    versions: dict[str, int]  # each customer's write count once they were applied


def run(*, population: int, batches: int, batch: int, apply: bool = True) -> Timed:
    """Process CPU per event over `batches` timed batches of `batch` events, and their work
    (`apply` False: the batches are built, not applied; callgrind's baseline)."""
    scoring = Scoring(load_rules(default_rules_path()))
    by_id: dict[str, CustomerRecord] = {}
    created = NOW - timedelta(days=3)
    first = first_purchases("m-p", population, at=created)
    for start in range(0, population, 1000):
        _apply(_records(first[start : start + 1000]), by_id, scoring, created)
    plans = []
    for index in range(batches):  # encoded before the timing, as the broker hands them over
        probes = first_purchases(f"m-n{index}", -(-batch // 10), at=NOW)
        others = returning_customers(
            "m-p", population, batch - len(probes), at=NOW, seed=index,
            event_prefix=f"m-x{index}-",
        )  # fmt: skip
        mixed = [probes[i // 10] if i % 10 == 0 else others.pop() for i in range(batch)]
        plans.append(_records(mixed))
    gc.collect()
    rows = 0
    if not apply:
        return Timed(0.0, 0, {})
    with gc_paused():  # as the consumer does around a batch; re-enabled even on an error
        started = time.process_time()
        for index, records in enumerate(plans):
            rows += _apply(records, by_id, scoring, NOW + timedelta(seconds=index))
        spent = time.process_time() - started
    versions = {customer: record.version for customer, record in by_id.items()}
    return Timed(spent / max(1, batches * batch), rows, versions)


def instructions(*, population: int, batches: int, batch: int, apply: bool = True) -> int:
    """Instructions callgrind counts for one run of this model (setup included)."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
        "-m", "bench.cpu_model", f"--population={population}", f"--batches={batches}",
        f"--batch={batch}", *([] if apply else ["--build-only"]),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts on every run
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {done.stderr[-500:]}")
    return int(found.group(1))


VALGRIND_MISSING = (
    "valgrind is needed to count instructions (--callgrind, `make bench-cpu`) and is not on"
    " PATH: install it (Debian/Ubuntu: apt-get install valgrind; Fedora: dnf install valgrind;"
    " macOS: not available, run it in a Linux container)"
)


def require_valgrind() -> None:
    """Exit with one line saying how to get valgrind when it is not installed: the first
    callgrind run ended in a FileNotFoundError traceback."""
    if shutil.which("valgrind") is None:
        raise SystemExit(VALGRIND_MISSING)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_model", description=__doc__)
    parser.add_argument("--population", type=int, default=5000, help="existing customers")
    parser.add_argument("--batches", type=int, default=10, help="timed batches (0: setup only)")
    parser.add_argument("--batch", type=int, default=2000, help="events per batch")
    parser.add_argument(
        "--build-only", action="store_true", help="build the batches, do not apply them"
    )
    parser.add_argument(
        "--callgrind", action="store_true",
        help="count instructions per event instead (two runs under valgrind, minutes each)",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = {"population": args.population, "batch": args.batch}
    if args.callgrind:
        require_valgrind()
        # The baseline builds the same batches (their events, encoded), so the difference is
        # the scorer's work on them alone.
        with Console(stderr=True).status("callgrind: the setup alone, then with the batches"):
            setup = instructions(**sizes, batches=args.batches, apply=False)
            total = instructions(**sizes, batches=args.batches)
        print(f"instructions_per_event {(total - setup) / (args.batches * args.batch):,.0f}")
        return
    timed = run(**sizes, batches=args.batches, apply=not args.build_only)
    if args.batches:
        print(f"cpu_us_per_event {1e6 * timed.cpu_per_event:.1f}")


if __name__ == "__main__":
    main()
