"""Run the ingest service: refuse to start without keys, create topics, serve HTTP."""

from __future__ import annotations

import asyncio

from services.ingest.app import create_app
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from shared.clock import Clock
from shared.kafka import ensure_topics
from shared.logging import get_logger
from shared.service import serve
from shared.topics import Topics

log = get_logger(__name__)


async def run(
    settings: IngestSettings,
    *,
    stop: asyncio.Event | None = None,
    publisher: Publisher | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve ingest until `stop` is set or SIGTERM / SIGINT; a given publisher stays yours."""
    settings.require_keys()
    if settings.allow_anonymous and not settings.api_key_map():
        log.warning("serving WITHOUT API keys: anyone who reaches this port can send events")
    await ensure_topics(settings, Topics(settings.topic_namespace).all())
    app = create_app(settings, publisher=publisher, clock=clock)
    log.info("ingest listening", host=settings.host, port=settings.port)
    await serve(app, host=settings.host, port=settings.port, stop=stop)
