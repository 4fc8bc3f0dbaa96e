"""Scenario 4: Postgres crashes mid-stream (a private embedded server), stays away, returns.

Pass: while it is away the scorer and actions answer /readyz 503 and /healthz 200 (each
probe answered while the database is still away, so not by waiting for it), keep running
(same process, never restarted) with back-off rather than a crash loop; once it is back they
turn ready by themselves, and the final state is exact, every change published and acted on
once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from services.actions.db import migrate as migrate_actions
from shared.embedded import EmbeddedKafka
from shared.migrations import upgrade
from tests.faults.harness import Harness, ServiceProcess, stop_all
from tests.faults.outages import PrivatePostgres
from tests.faults.pipeline import (
    Outcome,
    Pipeline,
    check_actions,
    check_pipeline,
    new_receiver,
    scorer_progress,
    wait_actions_done,
    wait_scorer_done,
)
from tests.faults.verify import eventually
from tests.faults.workload import mixed_events, with_redeliveries
from tests.integration.actions.support import serving

# A hang detector, not a timing bound: readiness checks give up after 2 s, and the database
# stays away until the probes are done, so a probe that waited for it would never answer.
# 10 times the readiness bound, a third of the database command timeout (60 s).
HANG_S = 20.0


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    outage_s: float
    chunk: int
    pause_s: float


QUICK = Size(events=1500, customers=200, outage_s=8, chunk=50, pause_s=0.5)
DEEP = Size(events=8000, customers=800, outage_s=20, chunk=100, pause_s=0.5)


@pytest.fixture
async def private_pg() -> AsyncIterator[PrivatePostgres]:
    """A Postgres server of this test alone: it may be crashed at will."""
    pg = await asyncio.to_thread(lambda: PrivatePostgres().start())
    yield pg
    await asyncio.to_thread(pg.stop)


DEEP_MARKS = [pytest.mark.faults, pytest.mark.timeout(1200)]


@pytest.mark.parametrize(
    "size", [QUICK, pytest.param(DEEP, marks=DEEP_MARKS)], ids=["quick", "deep"]
)
async def test_a_postgres_outage_pauses_the_services_and_they_resume_exactly(
    size: Size,
    private_broker: EmbeddedKafka,
    private_pg: PrivatePostgres,
    harness: Harness,
    topic_namespace: str,
) -> None:
    database_url = await private_pg.create_database("tierstream")
    await asyncio.to_thread(upgrade, database_url, "scorer")
    await migrate_actions(database_url)
    sent = with_redeliveries(mixed_events(size.events, size.customers, seed=41), 0.05, seed=42)
    receiver = new_receiver()
    p = Pipeline(
        harness,
        private_broker.bootstrap_servers,
        database_url,
        topic_namespace,
        receiver,
        {"SCORER_BATCH_MAX_RECORDS": "100"},
    )
    await p.create_topics()
    outcome = Outcome("postgres-outage", records=len(sent))
    async with serving(receiver):
        scorer, actions = await asyncio.gather(p.start("scorer"), p.start("actions"))
        stream = p.stream(sent, chunk=size.chunk, pause_s=size.pause_s)
        producing = asyncio.create_task(stream.run())
        await eventually(
            lambda: _past(scorer_progress(p), stream.produced // 4),
            within=60,
            what="the scorer a quarter through the stream",
        )
        errors_before = await _loop_errors(scorer, actions)
        await asyncio.to_thread(private_pg.crash)
        during = await _watch_outage([scorer, actions], size.outage_s)
        produced_in_outage = stream.produced
        await asyncio.to_thread(private_pg.restart)
        recovered_in = await _wait_ready([scorer, actions])
        errors = {k: v - errors_before[k] for k, v in (await _loop_errors(scorer, actions)).items()}
        await producing
        assert stream.produced > produced_in_outage or size.pause_s == 0
        await wait_scorer_done(p, len(sent))
        records = await check_pipeline(p, sent, outcome)
        purchases = sum(1 for e in sent if e.type == "purchase")
        await wait_actions_done(p, len(records), purchases)
        assert [s.starts for s in (scorer, actions)] == [1, 1]  # never restarted: no crash loop
        assert await stop_all(scorer, actions) == [0, 0]
    await check_actions(p, records, outcome)
    outcome.notes = {
        "outage_s": size.outage_s,
        "recovered_in_s": round(recovered_in, 1),
        "loop_errors_in_outage": errors,
        **during,
    }
    outcome.print()
    # Back-off, not a hot loop: a few failed iterations per loop, not thousands.
    assert all(n < 10 * size.outage_s for n in errors.values()), errors


async def _past(progress: Callable[[], Awaitable[int]], n: int) -> bool:
    return await progress() > n


async def _watch_outage(services: list[ServiceProcess], seconds: float) -> dict[str, object]:
    """Probe the services through the outage: not ready (503), alive (200), answering while
    the database is away (the probes fail if one hangs)."""
    deadline, slowest, not_ready_after = time.monotonic() + seconds, 0.0, None
    started = time.monotonic()
    while time.monotonic() < deadline:
        for service in services:
            assert service.alive, f"{service.name} died in the outage:\n{service.log_tail()}"
            t0 = time.monotonic()
            ready, health = await _probe(service, "/readyz"), await _probe(service, "/healthz")
            slowest = max(slowest, time.monotonic() - t0)  # reported, not asserted
            assert health == 200
            if ready == 503 and not_ready_after is None:
                not_ready_after = time.monotonic() - started
        await asyncio.sleep(0.5)
    states = [await _probe(s, "/readyz") for s in services]
    assert states == [503] * len(services), states  # still away: every service says so
    return {"slowest_probe_s": round(slowest, 2), "first_503_after_s": not_ready_after}


async def _probe(service: ServiceProcess, path: str) -> int:
    """The probe's status; fails if no answer came within the hang detector."""
    try:
        return (await service.get(path, within=HANG_S)).status_code
    except httpx.TimeoutException:
        raise AssertionError(f"{service.name} {path} hung for {HANG_S:.0f}s: it waited for"
                             " the database instead of answering") from None  # fmt: skip


async def _wait_ready(services: list[ServiceProcess]) -> float:
    started = time.monotonic()

    async def ready() -> bool:
        codes = [(await s.get("/readyz")).status_code for s in services]
        return codes == [200] * len(services)

    await eventually(ready, within=60, what="services ready again")
    return time.monotonic() - started


async def _loop_errors(scorer: ServiceProcess, actions: ServiceProcess) -> dict[str, float]:
    return {
        "scorer": await scorer.metric("tierstream_scorer_loop_errors_total"),
        "actions": await actions.metric("tierstream_actions_loop_errors_total"),
    }
