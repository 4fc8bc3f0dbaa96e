"""Run ingest, scorer and actions in-process on the real broker and Postgres, drive some
traffic through them, and return what each one's /metrics served."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from services.actions.main import run as run_actions
from services.actions.settings import ActionsSettings
from services.ingest.main import run as run_ingest
from services.ingest.settings import IngestSettings
from services.scorer.main import run as run_scorer
from services.scorer.settings import ScorerSettings
from shared.embedded import free_port
from shared.migrations import upgrade_all
from shared.topics import Topics
from tests.support.infra import fresh_database, unique_namespace

KEY = "deploy-test-key"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SERVICES = ("ingest", "scorer", "actions")
AUTH = {"Authorization": f"Bearer {KEY}"}


def samples(text: str) -> dict[str, float]:
    """Sum of sample values per sample name and per `name{label="value"}`, for progress checks."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keys = [sample.name, *(f'{sample.name}{{{k}="{v}"}}' for k, v in sample.labels.items())]
            for key in keys:
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _purchases(customer: str) -> list[dict[str, Any]]:
    """Ten purchases of 1,000 within 45 days: a gold customer (DOMAIN.md default rules)."""
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


def _others() -> list[dict[str, Any]]:
    at = (NOW - timedelta(hours=1)).isoformat()
    return [
        {"type": "login", "event_id": "l-1", "customer_id": "c-2", "occurred_at": at,
         "channel": "web"},
        {"type": "support", "event_id": "s-1", "customer_id": "c-3", "occurred_at": at,
         "ticket_id": "t-1", "action": "opened"},
    ]  # fmt: skip


def _settings(kafka: str, database_url: str, ports: dict[str, int]) -> list[Any]:
    common: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka,
        "database_url": database_url,
        "topic_namespace": unique_namespace(),
        "partitions": 3,
        "kafka_session_timeout_ms": 6000,
        "kafka_request_timeout_ms": 5000,
        "api_keys": f"deploy:{KEY}",
        "now": NOW,
    }
    return [
        IngestSettings(**common, port=ports["ingest"]),
        ScorerSettings(
            **common, port=ports["scorer"], poll_timeout_ms=100, relay_interval_s=0.1,
            sweep_interval_s=1.0, gauge_interval_s=0.3,
        ),
        ActionsSettings(
            **common, port=ports["actions"], poll_timeout_ms=100, dispatch_interval_s=0.1,
            gauge_interval_s=0.3,
        ),
    ]  # fmt: skip


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await check():
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


async def _send_traffic(client: httpx.AsyncClient, ingest: str, settings: Any) -> None:
    """Accepted, rejected and unauthorised requests, and one poison record on the topic."""
    batch = {"events": _purchases("vip-1") + _others()}
    accepted = await client.post(f"{ingest}/v1/events/batch", json=batch, headers=AUTH)
    assert accepted.status_code == 202, accepted.text
    invalid = await client.post(f"{ingest}/v1/events", json={"type": "purchase"}, headers=AUTH)
    assert invalid.status_code == 422, invalid.text
    assert (await client.post(f"{ingest}/v1/events", json={})).status_code == 401
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        topic = Topics(settings.topic_namespace).purchases
        await producer.send_and_wait(topic, b"{not json", key=b"poison")
    finally:
        await producer.stop()


async def _drive(client: httpx.AsyncClient, urls: dict[str, str], settings: Any) -> None:
    async def ready() -> bool:
        codes = [(await client.get(f"{u}/readyz")).status_code for u in urls.values()]
        return codes == [200, 200, 200]

    async def processed() -> bool:
        # Every series the tests read, gauges included (they refresh on their own interval).
        scorer_text = (await client.get(f"{urls['scorer']}/metrics")).text
        actions_text = (await client.get(f"{urls['actions']}/metrics")).text
        scorer, actions = samples(scorer_text), samples(actions_text)
        return (
            scorer_text.count("tierstream_scorer_consumer_lag_records{") == 3 * 3
            and actions_text.count("tierstream_actions_consumer_lag_records{") == 2 * 3
            and scorer.get("tierstream_scorer_published_changes_total", 0) > 0
            and scorer.get("tierstream_scorer_events_total", 0) >= 13
            and scorer.get('tierstream_scorer_customers{class="gold"}', 0) > 0
            and actions.get("tierstream_actions_tasks_open", 0) > 0
            and actions.get("tierstream_actions_enrolments", 0) > 0
        )

    await _until(ready, 60, "ingest, scorer and actions to be ready")
    await _send_traffic(client, urls["ingest"], settings)
    await _until(processed, 60, "events scored, a change published and a task opened")


async def exercise(kafka: str, pg_server_url: str) -> dict[str, str]:
    """Run the three services with traffic; return each one's /metrics text."""
    async with fresh_database(pg_server_url) as database_url:
        await upgrade_all(database_url)
        ports = {name: free_port() for name in SERVICES}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        stop = asyncio.Event()
        configs = _settings(kafka, database_url, ports)
        runners = (run_ingest, run_scorer, run_actions)
        tasks = [
            asyncio.create_task(runner(config, stop=stop))  # type: ignore[operator]
            for runner, config in zip(runners, configs, strict=True)
        ]
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                await _drive(client, urls, configs[0])
                return {n: (await client.get(f"{u}/metrics")).text for n, u in urls.items()}
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
