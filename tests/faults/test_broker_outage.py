"""Scenario 5: the broker drops off the network mid-stream (every connection cut, new ones
refused) and comes back on the same address; ingest, scorer and actions keep running.

Pass: while it is away ingest answers 503 + Retry-After + problem+json and /readyz 503,
every request and probe is answered by the services' own bounds (the broker's request
timeout is set far beyond a hang detector, so none waits for the broker); the scorer
reports not ready; afterwards ingest accepts again without a restart, the consumers
reconnect by themselves (same processes), and the state is exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from shared.domain.state import Event
from tests.faults.harness import AUTH, Harness, ServiceProcess, stop_all
from tests.faults.outages import GatedBroker
from tests.faults.pipeline import (
    Outcome,
    Pipeline,
    check_actions,
    check_pipeline,
    new_receiver,
    wait_actions_done,
    wait_scorer_done,
)
from tests.faults.verify import eventually, read_topic, scalar
from tests.faults.workload import mixed_events, with_redeliveries
from tests.integration.actions.support import serving

PUBLISH_TIMEOUT_S = 2.0
# The broker's request timeout, far beyond the services' own bounds: a request or probe that
# waited for the broker instead would hang this long.
REQUEST_TIMEOUT_MS = 120_000
# A hang detector, not a timing bound: 10 times the publish timeout, a sixth of the request
# timeout. An answer within it came from the service's own bound, whatever the load.
HANG_S = 20.0
INGEST_ENV = {
    "INGEST_PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S),
    "INGEST_RETRY_AFTER_S": "1",
    "INGEST_READY_TIMEOUT_S": "1",
    "KAFKA_REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
}


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    outage_s: float


QUICK = Size(events=1200, customers=150, outage_s=6)
DEEP = Size(events=6000, customers=600, outage_s=20)


@dataclass
class Sender:
    """An upstream system: POSTs batches to ingest, and on 503 waits Retry-After and resends."""

    url: str
    events: list[Event]
    batch: int = 25
    pause_s: float = 0.1
    responses: list[tuple[int, float, str | None, str | None]] = field(default_factory=list)
    accepted: int = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=HANG_S) as http:
            for start in range(0, len(self.events), self.batch):
                part = self.events[start : start + self.batch]
                body = {"events": [e.model_dump(mode="json", exclude_none=True) for e in part]}
                while not await self._send(http, body):
                    pass
                self.accepted += len(part)
                await asyncio.sleep(self.pause_s)

    async def _send(self, http: httpx.AsyncClient, body: dict[str, Any]) -> bool:
        started = time.monotonic()
        try:
            response = await http.post("/v1/events/batch", json=body, headers=AUTH)
        except httpx.TimeoutException:
            raise AssertionError(f"a request hung for {HANG_S:.0f}s: ingest waited for the"
                                 " broker instead of its publish timeout") from None  # fmt: skip
        elapsed = time.monotonic() - started  # reported, not asserted
        retry_after = response.headers.get("retry-after")
        kind = response.headers.get("content-type")
        self.responses.append((response.status_code, elapsed, retry_after, kind))
        if response.status_code == 202:
            return True
        assert response.status_code == 503, response.text
        await asyncio.sleep(float(retry_after or 1))
        return False


@pytest.fixture
async def gated_broker() -> AsyncIterator[GatedBroker]:
    broker = await GatedBroker().start()
    yield broker
    await broker.stop()


DEEP_MARKS = [pytest.mark.faults, pytest.mark.timeout(1200)]


@pytest.mark.parametrize(
    "size", [QUICK, pytest.param(DEEP, marks=DEEP_MARKS)], ids=["quick", "deep"]
)
async def test_a_broker_outage_gives_503s_and_everything_recovers_without_restarts(
    size: Size,
    gated_broker: GatedBroker,
    pipeline_db: str,
    harness: Harness,
    topic_namespace: str,
) -> None:
    sent = with_redeliveries(mixed_events(size.events, size.customers, seed=51), 0.05, seed=52)
    receiver = new_receiver()
    p = Pipeline(
        harness, gated_broker.bootstrap_servers, pipeline_db, topic_namespace, receiver, INGEST_ENV
    )
    await p.create_topics()
    outcome = Outcome("broker-outage", records=len(sent))
    async with serving(receiver):
        ingest, scorer, actions = await asyncio.gather(
            p.start("ingest"), p.start("scorer"), p.start("actions")
        )
        sender = Sender(ingest.url, sent)
        sending = asyncio.create_task(sender.run())
        await eventually(
            lambda: _inbox_over(pipeline_db, len(sent) // 5),
            within=60,
            what="the scorer a fifth through the stream",
        )
        accepted_before = sender.accepted
        await gated_broker.gate.close()
        answered_before = len(sender.responses)
        during = await _watch_outage(ingest, scorer, actions, size.outage_s)
        # Ingest refuses while the broker is still away (its publish timeout): a publish that
        # waited for the broker would answer nothing until the gate opens, so the gate stays
        # closed until a 503 came, or the hang detector gives up.
        await eventually(
            lambda: _refused_since(sender, answered_before),
            within=HANG_S,
            what="a 503 from ingest while the broker is away",
        )
        answers_in_outage = len(sender.responses) - answered_before
        await gated_broker.gate.open()
        await eventually(lambda: _ready(ingest, scorer), within=60, what="ingest and scorer ready")
        await sending
        sizes = await _topic_sizes(p)
        await wait_scorer_done(p, sum(sizes[t] for t in p.topics.events))
        records = await check_pipeline(p, sent, outcome)
        await wait_actions_done(p, len(records), sizes[p.topics.purchases])
        assert [s.starts for s in (ingest, scorer, actions)] == [1, 1, 1]
        assert await stop_all(ingest, scorer, actions) == [0, 0, 0]
    await check_actions(p, records, outcome)
    refused = [r for r in sender.responses if r[0] == 503]
    slowest = max(r[1] for r in sender.responses)
    outcome.notes = {
        "outage_s": size.outage_s,
        "503s": len(refused),
        "slowest_request_s": round(slowest, 2),
        "accepted_before_outage": accepted_before,
        "requests": len(sender.responses),
        "answers_in_outage": answers_in_outage,
        **during,
    }
    outcome.print()
    assert all(r[2] == "1" and r[3] == "application/problem+json" for r in refused), refused[:3]


async def _refused_since(sender: Sender, index: int) -> bool:
    return any(r[0] == 503 for r in sender.responses[index:])


async def _inbox_over(database_url: str, n: int) -> bool:
    return await scalar(database_url, "SELECT count(*) FROM scorer.inbox") > n


async def _watch_outage(
    ingest: ServiceProcess, scorer: ServiceProcess, actions: ServiceProcess, seconds: float
) -> dict[str, object]:
    """Ingest and scorer not ready through the outage; every service alive and answering."""
    deadline, codes = time.monotonic() + seconds, set()
    await asyncio.sleep(min(2.0, seconds / 2))  # let the readiness checks notice
    while time.monotonic() < deadline:
        for service in (ingest, scorer, actions):
            assert service.alive, f"{service.name} died in the outage:\n{service.log_tail()}"
        ready = [await _readyz(s) for s in (ingest, scorer, actions)]
        codes.add(tuple(ready))
        assert ready[:2] == [503, 503], ready
        await asyncio.sleep(0.5)
    return {"readyz_ingest_scorer_actions": sorted(codes)}


async def _readyz(service: ServiceProcess) -> int:
    """The /readyz status; fails if no answer came within the hang detector."""
    try:
        return (await service.get("/readyz", within=HANG_S)).status_code
    except httpx.TimeoutException:
        raise AssertionError(f"{service.name} /readyz hung for {HANG_S:.0f}s: it waited for"
                             " the broker instead of its readiness bound") from None  # fmt: skip


async def _ready(*services: ServiceProcess) -> bool:
    codes = [(await s.get("/readyz")).status_code for s in services]
    return codes == [200] * len(services)


async def _topic_sizes(p: Pipeline) -> dict[str, int]:
    """Records per topic (a batch refused with 503 may have been partly published before)."""
    topics = [*p.topics.events]
    found = [await read_topic(p.bootstrap, t, at_least=0, within=15) for t in topics]
    return {t: len(r) for t, r in zip(topics, found, strict=True)}
