"""Ingest metrics, registered on an injected registry. Labels never carry ids or free text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class IngestMetrics:
    """The ingest service's Prometheus instruments."""

    events: Counter
    request_seconds: Histogram
    publish_seconds: Histogram
    batch_events: Histogram
    broker_available: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        """Register every ingest metric on `registry`."""
        return cls(
            events=Counter(
                "tierstream_ingest_events_total",
                "Events received, by type, the API key's source and outcome "
                "(accepted, rejected, failed).",
                ["type", "source", "outcome"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "tierstream_ingest_request_duration_seconds",
                "HTTP request duration, by route template, method and status.",
                ["route", "method", "status"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            publish_seconds=Histogram(
                "tierstream_ingest_publish_duration_seconds",
                "Time from first send to the broker's last ack, by outcome.",
                ["outcome"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_events=Histogram(
                "tierstream_ingest_batch_size_events",
                "Events per accepted-or-rejected request body.",
                buckets=BATCH_SIZE_BUCKETS,
                registry=registry,
            ),
            broker_available=Gauge(
                "tierstream_ingest_broker_available",
                "1 when the last contact with the broker succeeded, else 0.",
                registry=registry,
            ),
        )

    def count_events(self, types: Sequence[str], *, source: str, outcome: str) -> None:
        """Count events of a request under one outcome."""
        for kind in set(types):
            self.events.labels(kind, source, outcome).inc(types.count(kind))


class RequestTimer:
    """ASGI middleware: request duration by route template (never the raw path), method, status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.histogram.labels(route, method, str(status)).observe(time.perf_counter() - started)
