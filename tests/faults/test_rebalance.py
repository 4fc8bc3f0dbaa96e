"""Scenario 2: scale the scorers 1 -> 3 -> 1 while events stream in (rebalance churn).

Pass: the final state equals the one-pass reference (nothing lost, nothing applied twice:
the state counts every purchase, login and ticket event), each distinct event claimed
once, every change published. The deep version also freezes one scorer (SIGSTOP) past
its session timeout, so the group moves its partitions, and thaws it: a zombie whose
in-flight batch the offset fence must reject (or that committed before the new owner).
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass

import pytest

from shared.embedded import EmbeddedKafka
from tests.faults.harness import Harness, ServiceProcess, stop_all
from tests.faults.pipeline import (
    Outcome,
    Pipeline,
    check_pipeline,
    holds,
    new_receiver,
    wait_scorer_done,
)
from tests.faults.verify import eventually
from tests.faults.workload import Stream, mixed_events, with_redeliveries
from tests.integration.scorer.support import assigned_partitions

PARTITIONS = 9  # three event topics, three partitions each
FENCED = "tierstream_scorer_fenced_batches_total"


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    cycles: int
    zombie: bool
    chunk: int
    pause_s: float


QUICK = Size(events=2000, customers=200, cycles=1, zombie=False, chunk=50, pause_s=0.25)
DEEP = Size(events=20_000, customers=2000, cycles=3, zombie=True, chunk=200, pause_s=0.1)


DEEP_MARKS = [pytest.mark.faults, pytest.mark.timeout(1200)]


@pytest.mark.parametrize(
    "size", [QUICK, pytest.param(DEEP, marks=DEEP_MARKS)], ids=["quick", "deep"]
)
async def test_scaling_scorers_one_three_one_mid_stream_keeps_the_state_exact(
    size: Size,
    private_broker: EmbeddedKafka,
    pipeline_db: str,
    harness: Harness,
    topic_namespace: str,
) -> None:
    sent = with_redeliveries(mixed_events(size.events, size.customers, seed=21), 0.1, seed=22)
    p = Pipeline(
        harness,
        private_broker.bootstrap_servers,
        pipeline_db,
        topic_namespace,
        new_receiver(),
        {"SCORER_BATCH_MAX_RECORDS": "50"},
    )
    await p.create_topics()
    outcome = Outcome("rebalance", records=len(sent))
    first = await p.start("scorer")
    stream = p.stream(sent, chunk=size.chunk, pause_s=size.pause_s)
    producing = asyncio.create_task(stream.run())
    fenced, splits = 0.0, []
    for cycle in range(size.cycles):
        await _reach(stream, (cycle + 0.2) / size.cycles)
        extra = list(await asyncio.gather(p.start("scorer"), p.start("scorer")))
        splits.append(await _wait_split([first, *extra]))
        if size.zombie:
            await _freeze_and_thaw(extra[0], [first, extra[1]])
        await _reach(stream, (cycle + 0.6) / size.cycles)
        fenced += sum([await s.metric(FENCED) for s in [first, *extra]])
        assert await stop_all(*extra) == [0, 0]  # scale down: SIGTERM, drain, exit 0
        await _wait_split([first])
    await producing
    await wait_scorer_done(p, len(sent))
    fenced += await first.metric(FENCED)
    assert await stop_all(first) == [0]
    await check_pipeline(p, sent, outcome)
    outcome.notes = {
        "cycles": size.cycles,
        "fenced_batches": fenced,
        "splits": splits,
        "zombie": size.zombie,
    }
    outcome.print()


async def _reach(stream: Stream, fraction: float) -> None:
    def reached() -> bool:
        return stream.fraction >= fraction or stream.done.is_set()

    await eventually(lambda: holds(reached), within=600, every=0.05, what=f"{fraction:.0%} sent")


async def _wait_split(scorers: list[ServiceProcess]) -> list[int]:
    """Until the scorers own disjoint, non-empty partition sets covering every partition."""

    async def split() -> list[int] | None:
        owned = [assigned_partitions((await s.get("/metrics")).text) for s in scorers]
        union = set().union(*owned)
        disjoint = sum(len(o) for o in owned) == len(union)
        return (
            [len(o) for o in owned]
            if all(owned) and disjoint and len(union) == PARTITIONS
            else None
        )

    return await eventually(split, within=60, what=f"{len(scorers)} scorers splitting partitions")


async def _freeze_and_thaw(zombie: ServiceProcess, others: list[ServiceProcess]) -> None:
    """SIGSTOP until the others took its partitions over, then SIGCONT: it wakes as a zombie."""
    assert zombie.proc is not None
    os.kill(zombie.proc.pid, signal.SIGSTOP)
    try:
        await _wait_split(others)
    finally:
        os.kill(zombie.proc.pid, signal.SIGCONT)
    await _wait_split([*others, zombie])
