"""Ingest fixtures: real broker topics per test, the app in-process over httpx.ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from services.ingest.settings import IngestSettings
from shared.kafka import ensure_topics
from shared.metrics import new_registry
from tests.integration.ingest.ingest_helpers import ingest_settings, topics_of


@pytest.fixture
async def settings(kafka_bootstrap: str, topic_namespace: str) -> IngestSettings:
    """Ingest settings on this test's own, freshly created event topics."""
    configured = ingest_settings(kafka_bootstrap, topic_namespace)
    await ensure_topics(configured, topics_of(configured).events)
    return configured


@pytest.fixture
async def publisher(settings: IngestSettings) -> AsyncIterator[KafkaPublisher]:
    """A started Kafka publisher (the test owns it, as a caller of create_app would)."""
    started = KafkaPublisher(settings, timeout_s=settings.publish_timeout_s)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def registry() -> CollectorRegistry:
    return new_registry()


@pytest.fixture
async def client(
    settings: IngestSettings, publisher: KafkaPublisher, registry: CollectorRegistry
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the ingest app in-process."""
    app = create_app(settings, publisher=publisher, registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        yield http
