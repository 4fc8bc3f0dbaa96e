"""Helpers for the ingest tests: settings, event bodies, reading the topics back, live servers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn
from aiokafka import ConsumerRecord
from fastapi import FastAPI

from services.ingest.settings import IngestSettings
from shared.embedded import free_port
from shared.kafka import make_consumer
from shared.topics import Topics

API_KEY = "shop-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ingest_settings(bootstrap: str, namespace: str, **overrides: Any) -> IngestSettings:
    """Settings for one test: its own topics, one key for source `shop`, short timeouts."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_namespace": namespace,
        "partitions": 3,
        "kafka_request_timeout_ms": 5000,
        "api_keys": f"shop:{API_KEY}",
        "allow_anonymous": False,
        "publish_timeout_s": 5.0,
    }
    return IngestSettings(**{**values, **overrides})


def an_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def recent(minutes: float = 5) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def purchase(**fields: Any) -> dict[str, Any]:
    """A valid purchase body; `fields` override or add."""
    body = {
        "type": "purchase",
        "event_id": an_id("evt"),
        "customer_id": an_id("cust"),
        "occurred_at": recent(),
        "order_id": an_id("ord"),
        "amount": "19.99",
        "currency": "EUR",
    }
    return {**body, **fields}


def login(**fields: Any) -> dict[str, Any]:
    body = {
        "type": "login",
        "event_id": an_id("evt"),
        "customer_id": an_id("cust"),
        "occurred_at": recent(),
        "channel": "web",
    }
    return {**body, **fields}


def support(**fields: Any) -> dict[str, Any]:
    body = {
        "type": "support",
        "event_id": an_id("evt"),
        "customer_id": an_id("cust"),
        "occurred_at": recent(),
        "ticket_id": an_id("tkt"),
        "action": "opened",
    }
    return {**body, **fields}


async def read_records(
    settings: IngestSettings,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord]], bool],
    timeout_s: float = 15.0,
) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning, polled until `until(records)` or the deadline."""
    consumer = make_consumer(settings, None, topic)
    await consumer.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            records += [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()
    return records


def with_event_id(event_id: str) -> Callable[[list[ConsumerRecord]], bool]:
    """Stop condition: a record whose `ce_id` header is `event_id` was read."""
    return lambda records: any(ce_id(r) == event_id for r in records)


def ce_id(record: ConsumerRecord) -> str:
    return header(record, "ce_id")


def header(record: ConsumerRecord, name: str) -> str:
    values = [v for k, v in record.headers if k == name]
    assert len(values) == 1, f"expected one {name} header, got {record.headers}"
    return bytes(values[0]).decode()


def topics_of(settings: IngestSettings) -> Topics:
    return Topics(settings.topic_namespace)


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread (its own event loop); yields the URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `predicate` every 20 ms until true; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def wait_until_serving(url: str, task: asyncio.Task[None], timeout_s: float = 15.0) -> None:
    """Poll `url`/healthz until it answers; fail early if the service task ended."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as client:
        while True:
            if task.done():
                task.result()
                raise AssertionError("the service stopped before serving")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} did not start serving"
            await asyncio.sleep(0.05)
