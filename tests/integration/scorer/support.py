"""Helpers for scorer integration tests: events, producing, running the scorer, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.scorer.db import Pool, create_pool
from services.scorer.main import run
from services.scorer.metrics import scorer_metrics
from services.scorer.relay import OutboxRelay
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.contracts import CustomerLoggedIn, PurchaseMade, SupportAction, SupportTicketUpdated
from shared.db import asyncpg_dsn
from shared.domain.features import compute_features
from shared.domain.rules import classify, default_rules_path, load_rules
from shared.domain.state import Event, attributes_of, fold, new_state, prune, state_to_json
from shared.embedded import free_port
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics

T = TypeVar("T")
NOW = datetime.fromisoformat("2026-03-01T12:00:00+00:00")
# A sweeper's wait before it tries a customer whose evaluation raised again.
RETRY = timedelta(minutes=15)


class EventMaker(Protocol):
    """`purchase`, `login` or `support`: an event of a customer some days before NOW."""

    def __call__(self, event_id: str, customer_id: str, days_ago: float) -> Event: ...


def purchase(event_id: str, customer_id: str, days_ago: float, amount: str = "100") -> PurchaseMade:
    return PurchaseMade(
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=NOW - timedelta(days=days_ago),
        order_id=f"o-{event_id}",
        amount=Decimal(amount),
        currency="EUR",
    )


def login(event_id: str, customer_id: str, days_ago: float) -> CustomerLoggedIn:
    return CustomerLoggedIn(
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=NOW - timedelta(days=days_ago),
        channel="web",
    )


def support(
    event_id: str, customer_id: str, days_ago: float, nps: int | None = None
) -> SupportTicketUpdated:
    return SupportTicketUpdated(
        event_id=event_id,
        customer_id=customer_id,
        occurred_at=NOW - timedelta(days=days_ago),
        ticket_id=f"t-{customer_id}",
        action=SupportAction.OPENED,
        nps=nps,
    )


def scorer_settings(env: dict[str, str], **overrides: Any) -> ScorerSettings:
    """Settings from the test's environment dict (aliases) plus field overrides."""
    fields: dict[str, Any] = {
        "port": free_port(),
        "sweep_interval_s": 0.2,
        "relay_interval_s": 0.1,
        "poll_timeout_ms": 100,
        "gauge_interval_s": 0.5,
        "progress_interval_s": 0.1,
    }
    fields.update(overrides)
    return ScorerSettings.model_validate({**env, **fields})


@contextlib.asynccontextmanager
async def running_scorer(
    settings: ScorerSettings, clock: FixedClock
) -> AsyncIterator[asyncio.Task[None]]:
    """The scorer's run() as a task of this event loop; stopped (and awaited) afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop, clock=clock))
    try:
        # Serving HTTP means the topics exist (producing earlier would auto-create them).
        await wait_until(lambda: _serving(settings, task))
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _serving(settings: ScorerSettings, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # re-raise why the scorer stopped
        raise AssertionError("the scorer stopped")
    return await metrics_text(settings) is not None


async def metrics_text(settings: ScorerSettings) -> str | None:
    """The scorer's /metrics page, or None while its HTTP server is not up."""
    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{settings.port}/metrics")
    except httpx.TransportError:
        return None
    return response.text


async def wait_for_sweeps(settings: ScorerSettings, more: int = 2, *, within: float = 30.0) -> None:
    """Wait until the running scorer's time sweeper completed `more` sweeps after this call,
    the last with no partition held back: what was due by then has been swept. With `more`
    of 2 one of them started after the call (a sweep under way may have read the clock before
    the test moved it).

    Sweeps are counted by `tierstream_scorer_sweep_duration_seconds_count` (observed once per
    sweep step) on /metrics, with an API key when TIERSTREAM_OPEN_PROBES is off.
    """
    keys = list(settings.api_key_map())
    auth = {} if settings.open_probes or not keys else {"Authorization": f"Bearer {keys[0]}"}

    async def sample() -> tuple[float, float]:
        async with httpx.AsyncClient(headers=auth) as http:
            response = await http.get(f"http://127.0.0.1:{settings.port}/metrics")
        response.raise_for_status()
        values = {s.name: s.value for f in text_string_to_metric_families(response.text)
                  for s in f.samples}  # fmt: skip
        sweeps = values["tierstream_scorer_sweep_duration_seconds_count"]
        return sweeps, values["tierstream_scorer_sweep_held_partitions"]

    start, _ = await sample()
    deadline = time.monotonic() + within
    sweeps, held = start, 0.0
    while not (sweeps >= start + more and held == 0):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{sweeps - start:.0f} of {more} sweeps within {within}s"
                f" (partitions held by the last one: {held:.0f})"
            )
        await asyncio.sleep(0.05)
        sweeps, held = await sample()


def assigned_partitions(metrics: str | None) -> set[str]:
    """The partitions a scorer owns, from its consumer-lag gauge."""
    lines = re.findall(r'consumer_lag_records\{partition="(\d+)",topic="([^"]+)"\}', metrics or "")
    return {f"{topic}/{partition}" for partition, topic in lines}


async def produce(
    bootstrap: str, topic_for: Callable[[Event], str], events: Iterable[Event]
) -> None:
    """Publish events as ingest does: JSON value, keyed by customer id, acked."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic_for(e), value=e.model_dump_json().encode(), key=e.customer_id.encode()
            )
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_raw(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]]
) -> None:
    """Publish raw (key, value) records straight to a topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value=v, key=k) for k, v in records])
    finally:
        await producer.stop()


def topic_router(namespace: str) -> Callable[[Event], str]:
    topics = Topics(namespace)
    return lambda e: topics.for_event(e.type)


async def read_topic(bootstrap: str, topic: str, *, expect: int, within: float = 20.0) -> list[Any]:
    """Read a topic from the beginning until `expect` records arrived (or time is up)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + within
    try:
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(r for rs in batch.values() for r in rs)
        # A short extra poll: anything beyond `expect` would be a duplicate.
        batch = await consumer.getmany(timeout_ms=300)
        records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return records


async def wait_until(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 60.0, every: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy (so never None); fail after `within` s.

    The first wait of a test often includes the scorer's join of its consumer group, which
    the embedded broker grants about 11 s (twice the tests' session timeout) after another
    member left it, the previous test's scorer: 11-13 s of the 30 s this had, idle or loaded."""
    deadline = time.monotonic() + within
    last: T | None = await probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {last!r})")
        await asyncio.sleep(every)
        last = await probe()
    return last


@contextlib.asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def seqs(database_url: str, table: str) -> list[int]:
    """The `seq` of every row of a scorer table (tier_change, _pending, _published), in order."""
    async with connect(database_url) as conn:
        return [r["seq"] for r in await conn.fetch(f"SELECT seq FROM scorer.{table} ORDER BY seq")]


@contextlib.asynccontextmanager
async def relaying(
    env: dict[str, str], database_url: str, namespace: str, *,
    registry: CollectorRegistry | None = None, max_message_bytes: int = 1_048_588,
    batch: int = 100, pool_size: int = 2, producer_options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Pool, OutboxRelay, str]]:  # fmt: skip
    """A pool and a relay at NOW on this test's tier-changed topic (created), closed after."""
    settings = scorer_settings(env)
    topic = Topics(namespace).tier_changed
    await ensure_topics(settings, [topic])
    pool = await create_pool(database_url, size=pool_size, application_name="test")
    producer = make_producer(settings, **(producer_options or {}))
    await producer.start()
    try:
        yield pool, OutboxRelay(
            pool, producer, topic=topic, batch=batch, clock=FixedClock(NOW),
            metrics=scorer_metrics(registry or CollectorRegistry()),
            max_message_bytes=max_message_bytes,
        ), topic  # fmt: skip
    finally:
        await producer.stop()
        await pool.close()


async def customer_rows(database_url: str) -> dict[str, dict[str, Any]]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT c.*, r.next_review_at FROM scorer.customer AS c"
            " JOIN scorer.customer_review AS r USING (customer_id) WHERE c.state IS NOT NULL"
        )
    return {r["customer_id"]: {**dict(r), "state": json.loads(r["state"])} for r in rows}


async def count(database_url: str, sql: str, *args: Any) -> int:
    async with connect(database_url) as conn:
        return int(await conn.fetchval(sql, *args))


def reference(events: Iterable[Event], *, now: datetime) -> dict[str, dict[str, Any]]:
    """Each customer's state and classes from the pure domain, each distinct event once."""
    rules = load_rules(ScorerSettings().rules_file)
    states: dict[str, Any] = {}
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        fold(states.setdefault(event.customer_id, new_state(event.customer_id)), event, now=now)
    out = {}
    for customer_id, state in states.items():
        prune(state, now=now)
        c = classify(compute_features(state, now=now), attributes_of(state), rules)
        out[customer_id] = {
            "state": state_to_json(state),
            "value_tier": c.value_tier,
            "activity_level": c.activity_level,
            "lifecycle_stage": c.lifecycle_stage,
        }
    return out


def assert_matches_reference(
    rows: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> None:
    assert set(rows) == set(expected)
    for customer_id, want in expected.items():
        got = rows[customer_id]
        assert got["state"] == want["state"], customer_id
        for column in ("value_tier", "activity_level", "lifecycle_stage"):
            assert got[column] == want[column], (customer_id, column)


async def folded(
    database_url: str, customer_id: str, *, events: int
) -> dict[str, dict[str, Any]] | None:
    rows = await customer_rows(database_url)
    done = customer_id in rows and rows[customer_id]["state"]["event_count"] == events
    return rows if done else None


async def logins_through_an_outage(
    base_env: dict[str, str], database_url: str, bootstrap: str, namespace: str,
    clock: FixedClock,
) -> None:  # fmt: skip
    """Customer `back` logs in, the scorer stops; 60 days pass with a login every 5 days
    (11 unread events), and the clock stands at the end of them."""
    route = topic_router(namespace)
    async with running_scorer(scorer_settings(base_env), clock):
        await produce(bootstrap, route, [login("l0", "back", days_ago=1)])
        await wait_until(lambda: folded(database_url, "back", events=1))
    clock.advance(timedelta(days=60))
    await produce(bootstrap, route, [login(f"l{i}", "back", days_ago=-5 * i) for i in range(1, 12)])


GOLD_M = "{feature: m_score, op: ge, value: 4}"


def candidate(tmp_path: Path) -> Path:
    """The default rules, except that gold needs M = 5."""
    text = default_rules_path().read_text()
    assert GOLD_M in text
    path = tmp_path / "candidate.yaml"
    path.write_text(text.replace(GOLD_M, "{feature: m_score, op: ge, value: 5}"))
    return path
