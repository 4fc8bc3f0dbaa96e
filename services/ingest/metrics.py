"""Ingest metrics, registered on an injected registry. Labels never carry ids or free text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.ingest.parsing import UNKNOWN_TYPE
from shared.contracts import EVENT_MODELS
from shared.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS, request_duration


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
            request_seconds=request_duration(registry, "ingest"),
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

    def start_at_zero(self, sources: Iterable[str]) -> None:
        """Create every outcome's series, so `increase()` sees the first rejected or failed
        event of a source (a series born at 1 shows no increase)."""
        for source in sources:
            for kind in EVENT_MODELS:
                for outcome in ("accepted", "rejected", "failed"):
                    self.events.labels(kind, source, outcome)
            self.events.labels(UNKNOWN_TYPE, source, "rejected")
        for outcome in ("ok", "failed"):
            self.publish_seconds.labels(outcome)

    def count_events(self, types: Sequence[str], *, source: str, outcome: str) -> None:
        """Count events of a request under one outcome."""
        for kind in set(types):
            self.events.labels(kind, source, outcome).inc(types.count(kind))
