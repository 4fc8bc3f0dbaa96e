"""Scenario 9 (make test-faults only): a steady stream through ingest for several minutes.

Pass: each service's resident memory stays bounded (after warm-up it grows by less than
GROWTH_LIMIT_MB, and never passes ABSOLUTE_LIMIT_MB); once the stream stops the consumer
lag of the scorer and of actions returns to zero; the final state is exact.
TIERSTREAM_SOAK_S sets the duration (default 300 s), TIERSTREAM_SOAK_RATE events/s.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest

from shared.domain.state import Event
from shared.embedded import EmbeddedKafka
from tests.faults.harness import AUTH, Harness, ServiceProcess, stop_all
from tests.faults.pipeline import Outcome, Pipeline, check_pipeline, new_receiver, wait_scorer_done
from tests.faults.verify import eventually, scalar
from tests.faults.workload import mixed_events

DURATION_S = float(os.environ.get("TIERSTREAM_SOAK_S", "300"))
RATE = int(os.environ.get("TIERSTREAM_SOAK_RATE", "100"))
GROWTH_LIMIT_MB, ABSOLUTE_LIMIT_MB = 60, 600
MB = 1024 * 1024


async def _send_steadily(url: str, events: list[Event], rate: int) -> None:
    """`rate` events a second in batches of a tenth of that, paced by the clock."""
    batch = max(1, rate // 10)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
        for n, start in enumerate(range(0, len(events), batch)):
            part = [
                e.model_dump(mode="json", exclude_none=True) for e in events[start : start + batch]
            ]
            response = await http.post("/v1/events/batch", json={"events": part})
            assert response.status_code == 202, response.text
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.1 - time.monotonic()))


async def _sample_rss(
    services: list[ServiceProcess], samples: dict[str, list[int]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        for s in services:
            samples[s.name].append(s.rss_bytes())
        await asyncio.sleep(5)


async def _lag(service: ServiceProcess) -> float:
    return await service.metric(f"tierstream_{service.service}_consumer_lag_records")


@pytest.mark.faults
@pytest.mark.timeout(DURATION_S + 900)
async def test_a_steady_stream_for_minutes_keeps_memory_bounded_and_lag_returns_to_zero(
    private_broker: EmbeddedKafka, pipeline_db: str, harness: Harness, topic_namespace: str
) -> None:
    events = mixed_events(int(DURATION_S * RATE), max(500, int(DURATION_S * RATE) // 20), seed=91)
    p = Pipeline(
        harness, private_broker.bootstrap_servers, pipeline_db, topic_namespace, new_receiver()
    )
    await p.create_topics()
    services = list(await asyncio.gather(p.start("ingest"), p.start("scorer"), p.start("actions")))
    samples: dict[str, list[int]] = {s.name: [] for s in services}
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(services, samples, stop))
    await _send_steadily(services[0].url, events, RATE)
    await wait_scorer_done(p, len(events), within=300)
    _, scorer, actions = services
    await eventually(lambda: _zero_lag(scorer, actions), within=120, what="lag back to zero")
    stop.set()
    await sampler
    outcome = Outcome("soak", records=len(events))
    await check_pipeline(p, events, outcome)
    report = {}
    for name, rss in samples.items():
        warm = rss[len(rss) // 4]  # after a quarter of the run: caches and pools are filled
        report[name] = {
            "warm_mb": round(warm / MB),
            "max_mb": round(max(rss) / MB),
            "end_mb": round(rss[-1] / MB),
        }
    inbox = await scalar(pipeline_db, "SELECT count(*) FROM scorer.inbox")
    outcome.notes = {"duration_s": DURATION_S, "rate": RATE, "rss": report, "inbox_rows": inbox}
    outcome.print()
    assert await stop_all(*services) == [0, 0, 0]
    for name, r in report.items():
        assert r["max_mb"] < ABSOLUTE_LIMIT_MB, (name, r)
        assert r["max_mb"] - r["warm_mb"] < GROWTH_LIMIT_MB, (name, r)


async def _zero_lag(scorer: ServiceProcess, actions: ServiceProcess) -> bool:
    return await _lag(scorer) == 0 and await _lag(actions) == 0
