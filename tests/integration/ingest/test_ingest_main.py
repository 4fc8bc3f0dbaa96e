"""`run()`: refuses to start without keys, creates every topic, serves until stopped."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.ingest.main import run
from shared.embedded import free_port
from tests.integration.ingest.ingest_helpers import (
    AUTH,
    ingest_settings,
    login,
    read_records,
    topics_of,
    wait_until_serving,
    with_event_id,
)


async def test_without_keys_and_without_anonymous_it_refuses_to_start(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = ingest_settings(kafka_bootstrap, topic_namespace, api_keys="")
    with pytest.raises(SystemExit, match="no API keys"):
        await run(settings)  # not in a task: asyncio re-raises SystemExit out of the loop


async def test_it_creates_its_topics_and_serves_until_stopped(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = ingest_settings(kafka_bootstrap, topic_namespace, port=free_port())
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:
        url = f"http://127.0.0.1:{settings.port}"
        await wait_until_serving(url, task)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post("/v1/events", json=login(), headers=AUTH)).status_code == 202
            assert (await client.get("/readyz")).status_code == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert set(topics_of(settings).all()) <= set(await admin.list_topics())
    finally:
        await admin.close()


async def test_anonymous_mode_serves_without_keys_under_the_anonymous_source(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = ingest_settings(
        kafka_bootstrap, topic_namespace, api_keys="", allow_anonymous=True, port=free_port()
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:
        url = f"http://127.0.0.1:{settings.port}"
        await wait_until_serving(url, task)
        async with httpx.AsyncClient(base_url=url) as client:
            event = login()
            response = await client.post("/v1/events", json=event)
            assert response.status_code == 202, response.text
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    topic = topics_of(settings).logins
    [record] = await read_records(settings, topic, until=with_event_id(event["event_id"]))
    assert json.loads(record.value)["source"] == "anonymous"
