"""Background loops: a failing step is counted and retried, its first failure logged with
the traceback (where a bug is), the retries of the same run without (an outage is long)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from shared import loops


async def test_a_run_of_failures_logs_the_first_traceback_only_and_counts_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops, "BACKOFF_START_S", 0.001)  # quick retries
    errors = Counter("errors_total", "e", ["loop"], registry=CollectorRegistry())
    stop = asyncio.Event()
    calls = 0

    async def step() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"boom {calls}")
        stop.set()
        return False

    setattr(loops, "BACKOFF_START_S", 0.001)  # noqa: B010 - quick retries
    try:
        with capture_logs() as logs:
            await asyncio.wait_for(
                loops.run_loop("work", step, stop, idle_s=0.01, errors=errors), 5
            )
    finally:
        setattr(loops, "BACKOFF_START_S", 0.25)  # noqa: B010
    failed = [entry for entry in logs if entry["event"] == "loop iteration failed"]
    assert [entry["error"] for entry in failed] == [f"RuntimeError('boom {n}')" for n in (1, 2, 3)]
    assert isinstance(failed[0]["exc_info"], RuntimeError)
    assert [entry.get("exc_info") for entry in failed[1:]] == [None, None]
    assert errors.labels("work")._value.get() == 3
