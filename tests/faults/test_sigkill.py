"""Scenario 1: SIGKILL the scorer and the actions service mid-stream, restart them at once.

Pass: every customer's state equals the one-pass reference of the distinct events; every
committed tier change is on the topic (set equality by id); actions consumed every change
once, no task / alert / enrolment / sequence step twice for one change, the alerts are
exactly the planned ones, and the webhook receiver saw one success per idempotency key.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import pytest

from shared.embedded import EmbeddedKafka
from tests.faults.harness import Harness, stop_all
from tests.faults.pipeline import (
    Outcome,
    Pipeline,
    actions_progress,
    check_actions,
    check_pipeline,
    kill_when,
    new_receiver,
    scorer_progress,
    wait_actions_done,
    wait_scorer_done,
)
from tests.faults.verify import scorer_offsets
from tests.faults.workload import mixed_events, with_redeliveries
from tests.integration.actions.support import serving


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    scorer_kills: int
    actions_kills: int
    chunk: int
    pause_s: float


QUICK = Size(events=2000, customers=250, scorer_kills=3, actions_kills=1, chunk=50, pause_s=0.25)
DEEP = Size(events=30_000, customers=3000, scorer_kills=8, actions_kills=3, chunk=250, pause_s=0.2)
# Small transactions, so that a kill lands inside one more often than between two.
SMALL_BATCHES = {
    "SCORER_BATCH_MAX_RECORDS": "50",
    "SCORER_RELAY_BATCH": "40",
    "ACTIONS_BATCH_MAX_RECORDS": "40",
    "ACTIONS_DELIVERY_TIMEOUT_S": "2",
    "ACTIONS_LEASE_MARGIN_S": "0.5",
    "ACTIONS_BACKOFF_BASE_S": "0.1",
    "ACTIONS_BACKOFF_CAP_S": "0.5",
}


DEEP_MARKS = [pytest.mark.faults, pytest.mark.timeout(1200)]


@pytest.mark.parametrize(
    "size", [QUICK, pytest.param(DEEP, marks=DEEP_MARKS)], ids=["quick", "deep"]
)
async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(
    size: Size,
    private_broker: EmbeddedKafka,
    pipeline_db: str,
    harness: Harness,
    topic_namespace: str,
) -> None:
    rng = random.Random(7)
    events = mixed_events(size.events, size.customers, seed=11)
    sent = with_redeliveries(events, 0.1, seed=12)
    receiver = new_receiver()
    p = Pipeline(
        harness,
        private_broker.bootstrap_servers,
        pipeline_db,
        topic_namespace,
        receiver,
        SMALL_BATCHES,
    )
    await p.create_topics()
    outcome, kill_log = Outcome("sigkill", records=len(sent)), list[dict[str, Any]]()
    async with serving(receiver):
        scorer, actions = await asyncio.gather(p.start("scorer"), p.start("actions"))
        stream = p.stream(sent, chunk=size.chunk, pause_s=size.pause_s)
        producing = asyncio.create_task(stream.run())

        async def describe() -> dict[str, Any]:
            return {"produced": stream.produced, "committed": await scorer_offsets(pipeline_db)}

        async def kill_scorer() -> None:
            for at in sorted(rng.uniform(0.1, 0.9) for _ in range(size.scorer_kills)):
                await kill_when(
                    scorer,
                    lambda at=at: stream.fraction >= at,  # type: ignore[misc]
                    scorer_progress(p),
                    kill_log,
                    describe,
                )

        async def kill_actions() -> None:
            for at in sorted(rng.uniform(0.2, 0.8) for _ in range(size.actions_kills)):
                await kill_when(
                    actions,
                    lambda at=at: stream.fraction >= at,  # type: ignore[misc]
                    actions_progress(p),
                    kill_log,
                    describe,
                )

        await asyncio.gather(producing, kill_scorer(), kill_actions())
        await wait_scorer_done(p, len(sent), within=180)
        records = await check_pipeline(p, sent, outcome)
        purchases = sum(1 for e in sent if e.type == "purchase")
        await wait_actions_done(p, len(records), purchases)
        assert await stop_all(scorer, actions) == [0, 0]
    outcome.kills, outcome.notes = harness.kills, {"kill_log": kill_log}
    await check_actions(p, records, outcome)
    outcome.print()
    assert outcome.kills == {"scorer": size.scorer_kills, "actions": size.actions_kills}
    scorer_kills = [k for k in kill_log if k["process"].startswith("scorer")]
    # Kills landed mid-stream: the scorer had not yet committed what had been produced.
    assert all(k["committed"] < len(sent) for k in scorer_kills), kill_log
