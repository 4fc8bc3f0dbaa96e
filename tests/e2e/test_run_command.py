"""`tierstream run` end to end: embedded infrastructure, three services, HTTP in, task out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from shared.embedded import free_port

KEY = "e2e-key"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SERVICES = {"ingest", "scorer", "actions"}
# A hang detector, not a timing bound: `run` stops its services within the supervisor's 8 s
# grace and then the broker and Postgres, each stop bounded; only a stop that never ends
# (a wait on something that does not come) is still running after this.
STOP_HANG_S = 60.0


def _poll(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def _processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains `text` (e.g. a Postgres data directory)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def _embedded_pg_dir(log: Path) -> str:
    """The embedded Postgres data directory, read from the banner `tierstream run` prints.

    The banner comes once `run` itself has seen every service ready, which may be after
    the test has (a fast pipeline finishes the test's work first): wait for it.
    """

    def banner() -> str | None:
        match = re.search(r"host=([^\s&]*tierstream-pg-[^/\s&]+)", log.read_text())
        return match.group(1) if match else None

    found: str = _poll(banner, 30, f"the embedded Postgres in the banner of {log}")
    return found


def _stopped_in_order(log: Path) -> set[str]:
    """The services whose server logged its orderly end ("Finished server process") after
    `run` said it was stopping: each one handled the SIGTERM itself and drained; a service
    that ignored it would be killed at the supervisor's grace, logging nothing of the kind."""
    _, _, after = log.read_text(errors="replace").partition("\nstopping...\n")
    stopped = set()
    for line in after.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("event")).startswith("Finished server"):
            stopped.add(str(record.get("service")))
    return stopped


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int], Path]]:
    """`tierstream run --no-demo` with embedded broker and Postgres (no infra env vars),
    its probes closed to requests without a key."""
    log = tmp_path / "run.log"
    ports = {"ingest": free_port(), "scorer": free_port(), "actions": free_port()}
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    env.update(
        {
            "TIERSTREAM_API_KEYS": f"e2e:{KEY}",
            # Closed probes: `run` waited for /readyz without its key and gave up after 90 s.
            "TIERSTREAM_OPEN_PROBES": "false",
            "TIERSTREAM_NOW": NOW.isoformat(),
            # `run` has its services log warnings only unless a level is set: the orderly
            # stop is read from their INFO lines ("Finished server process").
            "TIERSTREAM_LOG_LEVEL": "INFO",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SCORER_SWEEP_INTERVAL_S": "1",
            **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        }
    )
    with log.open("wb") as out:  # a file, not a pipe: nobody reads it while the system runs
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run", "--no-demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, ports, log
    finally:
        if proc.poll() is None:  # a failed test: stop it as Ctrl-C would, so nothing leaks
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _purchases(customer: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "purchase",
            "event_id": f"{customer}-{i}",
            "customer_id": customer,
            "occurred_at": (NOW - timedelta(days=45 - i * 4.5)).isoformat(),
            "order_id": f"{customer}-o{i}",
            "amount": "1000.00",
            "currency": "EUR",
        }
        for i in range(10)
    ]


def test_run_turns_ten_purchases_into_gold_and_a_task_then_stops_cleanly(
    system: tuple[subprocess.Popen[bytes], dict[str, int], Path],
) -> None:
    proc, ports, log = system
    auth = {"Authorization": f"Bearer {KEY}"}
    ingest = f"http://127.0.0.1:{ports['ingest']}"
    scorer = f"http://127.0.0.1:{ports['scorer']}"
    actions = f"http://127.0.0.1:{ports['actions']}"

    def ready() -> bool:
        try:
            return all(
                httpx.get(f"{u}/readyz", headers=auth, timeout=2).status_code == 200
                for u in (ingest, scorer, actions)
            )
        except httpx.HTTPError:
            return False

    _poll(ready, 90, "all services ready")
    posted = httpx.post(
        f"{ingest}/v1/events/batch", json={"events": _purchases("vip-1")}, headers=auth, timeout=10
    )
    assert posted.status_code == 202, posted.text

    def customer() -> dict[str, Any] | None:
        r = httpx.get(f"{scorer}/v1/customers/vip-1", headers=auth, timeout=5)
        return r.json() if r.status_code == 200 and r.json()["value_tier"] == "gold" else None

    state = _poll(customer, 60, "vip-1 to become gold")
    assert state["lifetime_orders"] == 10
    assert float(state["lifetime_spend"]) == 10_000.0

    def tasks() -> list[dict[str, Any]]:
        r = httpx.get(
            f"{actions}/v1/tasks", params={"customer_id": "vip-1"}, headers=auth, timeout=5
        )
        return r.json()["items"] if r.status_code == 200 else []

    items = _poll(tasks, 60, "a task for vip-1")
    assert len(items) == 1 and items[0]["customer_id"] == "vip-1"

    children = psutil.Process(proc.pid).children(recursive=True)
    pg_dir = _embedded_pg_dir(log)
    postgres = _processes_mentioning(pg_dir)
    assert postgres, "the embedded Postgres runs"
    assert any("tansu" in " ".join(c.cmdline()) for c in children), "the embedded broker runs"
    assert len(children) >= 3  # ingest, scorer, actions (+ broker, Postgres)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(STOP_HANG_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"run still running {STOP_HANG_S:.0f}s after Ctrl-C") from None
    assert code == 0
    assert _stopped_in_order(log) == SERVICES, log.read_text(errors="replace")[-3000:]
    # Reaped already, or gone within moments (a process that ignores its parent is not).
    _, still = psutil.wait_procs(children, timeout=5)
    alive = [c for c in still if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {[c.cmdline() for c in alive]}"
    assert _processes_mentioning(pg_dir) == [], "embedded Postgres left behind"
