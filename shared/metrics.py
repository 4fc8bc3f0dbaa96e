"""Prometheus helpers. Metrics take an injected `CollectorRegistry` (never the global one),
so several services can live in one test process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Buckets sized for what we measure: sub-millisecond dict work up to multi-second batches.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of a registry and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def request_duration(registry: CollectorRegistry, service: str) -> Histogram:
    """`tierstream_<service>_request_duration_seconds`: every HTTP service's request timing,
    observed by `shared.http.RequestTimer`."""
    return Histogram(
        f"tierstream_{service}_request_duration_seconds",
        "HTTP request duration, by route template, method and status.",
        ["route", "method", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
