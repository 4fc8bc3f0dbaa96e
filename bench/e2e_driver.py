"""End-to-end latency driver (runs inside the load-generator process).

Open loop: batches of events are POSTed on a fixed schedule at the target rate, whatever
the answers; a consumer of the tier-changed topic in the same process notes when each
customer's first change arrives. Latency = arrival - start of the POST that carried the
customer's event, both read from this process's monotonic clock.

What is measured are probes: first purchases of fresh customers, each certain to change
a tier. `new_share` of the events are probes; the rest is the traffic of customers who
already exist (`population` of them, created before the timed run): logins and repeat
purchases, which go through the same ingest requests, partitions and scorer batches as
the probes. With `new_share` 1 every event is a new customer (a sign-up storm: three tier
changes per event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.events import first_purchases, returning_customers
from bench.kafka_raw import kafka_settings
from bench.loadgen import IngestClient
from shared.kafka import make_consumer


@dataclass(frozen=True)
class E2eJob:
    """Where to post and listen, and the load: `rate` events/s for `seconds`."""

    url: str
    api_key: str
    bootstrap: str
    topic: str
    partitions: int
    rate: float
    seconds: float
    batch: int
    prefix: str
    new_share: float = 1.0
    population: int = 0
    seed: int = 7
    warmup: int = 20
    deadline_s: float = 30.0


PROBE_FETCH_WAIT_MS = 10


class Arrivals:
    """First arrival time of each customer key on the tier-changed topic, when the scorer
    decided that change (its `emitted_at`) and when it was published (the record's
    timestamp, the relay's clock as it wrote the record); wall clock, epoch seconds."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.first: dict[bytes, float] = {}
        self.decided: dict[bytes, float] = {}
        self.published: dict[bytes, float] = {}
        self.arrived = asyncio.Event()

    async def drain(self, idle_s: float = 1.0) -> None:
        """Read what is already on the topic (earlier runs) until nothing comes for `idle_s`."""
        while await self.consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=10_000):
            pass

    async def listen(self) -> None:
        """Note arrivals until cancelled."""
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    if record.key not in self.first:
                        self.first[record.key] = now
                        self.decided[record.key] = _emitted_at(record.value)
                        self.published[record.key] = record.timestamp / 1000
            if batch:
                self.arrived.set()

    async def wait_for(self, keys: Sequence[bytes], deadline_s: float) -> None:
        """Return when every key arrived or `deadline_s` passed."""
        deadline = time.monotonic() + deadline_s
        missing = [k for k in keys if k not in self.first]
        while missing and (left := deadline - time.monotonic()) > 0:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
            missing = [k for k in missing if k not in self.first]


def _emitted_at(value: bytes) -> float:
    """The change's `emitted_at` as epoch seconds (NaN when unreadable)."""
    try:
        return datetime.fromisoformat(json.loads(value)["emitted_at"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return float("nan")


def bodies(prefix: str, count: int, batch: int) -> list[Planned]:
    """One request per `batch` first purchases stamped now (every customer a probe)."""
    return _chunked(first_purchases(prefix, count, at=datetime.now(UTC)), batch, prefix)


def mixed_bodies(job: E2eJob, prefix: str, count: int) -> list[Planned]:
    """One request per `job.batch` events: `new_share` first purchases of fresh customers
    (the probes) spread evenly, the rest logins and repeat purchases of the population."""
    every = max(1, round(1 / job.new_share))
    probes = first_purchases(prefix, -(-count // every), at=datetime.now(UTC))
    others = returning_customers(
        f"{job.prefix}-p", job.population, count - len(probes), at=datetime.now(UTC),
        seed=job.seed, event_prefix=f"{prefix}-x",
    )  # fmt: skip
    events = [probes[i // every] if i % every == 0 else others.pop() for i in range(count)]
    return _chunked(events, job.batch, prefix)


@dataclass(frozen=True)
class Planned:
    """One request of a schedule: the probe keys it carries, its body, its events."""

    keys: list[bytes]
    body: bytes
    events: int


def _chunked(events: list[dict[str, object]], batch: int, probe_prefix: str) -> list[Planned]:
    chunks = [events[i : i + batch] for i in range(0, len(events), batch)]
    plan = []
    for chunk in chunks:
        ids = (str(e["customer_id"]) for e in chunk)
        keys = [c.encode() for c in ids if c.startswith(probe_prefix)]
        plan.append(Planned(keys, json.dumps({"events": chunk}).encode(), len(chunk)))
    return plan


def _percentile(values: Sequence[float], pct: int) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * pct // 100) - 1)]


@dataclass
class Posted:
    """What the POSTs of one schedule did."""

    span_s: float = 0.0  # length of the schedule (not of the last answer)
    accepted: int = 0  # events in 202 answers
    errors: int = 0  # requests answered otherwise
    http_ms: list[float] = field(default_factory=list)
    max_lag_ms: float = 0.0  # the latest a POST left after its scheduled moment


async def _post_schedule(
    job: E2eJob, plan: list[Planned], sent: dict[bytes, tuple[float, float]]
) -> Posted:
    """POST each batch at its slot, whatever the answers to the earlier ones."""
    posted = Posted()
    async with IngestClient(job.url, job.api_key, 32) as http:

        async def post(body: bytes, at: float, events: int) -> None:
            status, _ = await http.post(body)
            posted.http_ms.append(1000 * (time.perf_counter() - at))
            if status == 202:
                posted.accepted += events
            else:
                posted.errors += 1

        tasks = []
        slot = job.batch / job.rate
        started = time.perf_counter()
        for index, request in enumerate(plan):
            scheduled = started + index * slot
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            at = time.perf_counter()
            # Latency counts from the scheduled moment: a POST this process sent late (its
            # loop was busy) is late for the user too, and must not be left out of the figure.
            posted.max_lag_ms = max(posted.max_lag_ms, 1000 * (at - scheduled))
            sent.update(dict.fromkeys(request.keys, (scheduled, time.time() - (at - scheduled))))
            tasks.append(asyncio.create_task(post(request.body, at, request.events)))
        posted.span_s = time.perf_counter() - started + slot
        await asyncio.gather(*tasks)
    return posted


async def _warm_up(job: E2eJob, arrivals: Arrivals) -> int:
    """A few events end to end first (the scorer has joined its group and is warm), then
    the existing population is created, as fast as ingest takes it."""
    plan = bodies(f"{job.prefix}-w", job.warmup, job.warmup)
    posted = await _post_schedule(job, plan, {})
    await arrivals.wait_for(plan[0].keys, 120.0)
    if any(k not in arrivals.first for k in plan[0].keys):
        raise TimeoutError("warm-up events never reached the tier-changed topic")
    accepted = posted.accepted
    if job.population:
        population = bodies(f"{job.prefix}-p", job.population, 1000)
        async with IngestClient(job.url, job.api_key, 1) as http:
            for request in population:  # one request at a time: a backlog, not an overload
                status, text = await http.post(request.body)
                if status != 202:
                    raise RuntimeError(f"population POST answered {status}: {text}")
                accepted += request.events
        keys = [k for request in population for k in request.keys]
        await arrivals.wait_for(keys, 120.0)
        if any(k not in arrivals.first for k in keys):
            raise TimeoutError("the existing population never reached the tier-changed topic")
    return accepted


async def _measure(job: E2eJob, arrivals: Arrivals) -> dict[str, Any]:
    """The timed open loop; an event still missing at the deadline counts as arriving then
    (its latency is a lower bound, and `matched` says how many really arrived)."""
    warm = await _warm_up(job, arrivals)
    count = int(job.rate * job.seconds)
    plan = mixed_bodies(job, f"{job.prefix}-m", count)
    sent: dict[bytes, tuple[float, float]] = {}
    posted = await _post_schedule(job, plan, sent)
    await arrivals.wait_for(list(sent), job.deadline_s)
    gave_up = time.perf_counter()
    latencies = [1000 * (arrivals.first.get(k, gave_up) - at) for k, (at, _) in sent.items()]

    # Split at the scorer's decision and at the relay's write: POST -> decided (the batch
    # began), POST -> published (the batch committed and the relay wrote the record).
    def after_post(stamps: dict[bytes, float]) -> list[float]:
        return [1000 * (stamps[k] - wall) for k, (_, wall) in sent.items() if k in arrivals.first]

    decided, published = after_post(arrivals.decided), after_post(arrivals.published)
    return {
        "sent": count, "matched": sum(k in arrivals.first for k in sent),
        "accepted_events": posted.accepted + warm, "post_errors": posted.errors,
        "probes": len(sent), "achieved_rate": count / posted.span_s,
        "dispatch_lag_max_ms": round(posted.max_lag_ms, 1),
        "p50_ms": _percentile(latencies, 50), "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99), "max_ms": max(latencies),
        "http_p50_ms": _percentile(posted.http_ms, 50),
        "http_p99_ms": _percentile(posted.http_ms, 99),
        "to_decision_p50_ms": _percentile(decided, 50),
        "to_decision_p99_ms": _percentile(decided, 99),
        "to_publish_p50_ms": _percentile(published, 50),
        "to_publish_p99_ms": _percentile(published, 99),
    }  # fmt: skip


async def drive(job: E2eJob) -> dict[str, Any]:
    """Catch up with the topic, warm up, run the timed open loop, report latencies."""
    settings = kafka_settings(job.bootstrap, job.partitions)
    # tansu answers a waiting fetch only when the wait ends, not when data arrives: the
    # probe consumer's wait is added to what it measures, so keep it short.
    consumer = make_consumer(settings, None, fetch_max_wait_ms=PROBE_FETCH_WAIT_MS)
    await consumer.start()
    arrivals = Arrivals(consumer)
    try:
        partitions = [TopicPartition(job.topic, p) for p in range(job.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        await arrivals.drain()
        listener = asyncio.create_task(arrivals.listen())
        try:
            result = await _measure(job, arrivals)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    finally:
        await consumer.stop()
    return {**result, "driver_cpu_s": round(time.process_time(), 2)}
