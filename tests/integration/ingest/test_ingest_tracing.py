"""The W3C trace context of a request reaches every record ingest publishes."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from services.ingest.settings import IngestSettings
from shared.tracing import make_tracer
from tests.integration.ingest.ingest_helpers import (
    AUTH,
    header,
    login,
    purchase,
    read_records,
    topics_of,
    with_event_id,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_with_tracing_off_the_callers_traceparent_travels_unchanged(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    event = purchase()
    response = await client.post("/v1/events", json=event, headers={**AUTH, "traceparent": PARENT})
    assert response.status_code == 202, response.text
    records = await read_records(
        settings, topics_of(settings).purchases, until=with_event_id(event["event_id"])
    )
    assert header(records[-1], "traceparent") == PARENT


async def test_with_tracing_on_every_record_carries_the_publish_span_of_the_callers_trace(
    settings: IngestSettings, publisher: KafkaPublisher, registry: CollectorRegistry
) -> None:
    exporter = InMemorySpanExporter()
    app = create_app(
        settings, publisher=publisher, registry=registry,
        tracer=make_tracer("ingest", exporter=exporter),
    )  # fmt: skip
    events = [purchase(), login()]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://i") as http:
        response = await http.post(
            "/v1/events/batch", json={"events": events}, headers={**AUTH, "traceparent": PARENT}
        )
    assert response.status_code == 202, response.text
    [span] = exporter.get_finished_spans()
    assert span.name == "ingest.publish" and f"{span.context.trace_id:032x}" == TRACE_ID
    expected = f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    for event, topic in zip(
        events, (topics_of(settings).purchases, topics_of(settings).logins), strict=True
    ):
        records = await read_records(settings, topic, until=with_event_id(event["event_id"]))
        assert header(records[-1], "traceparent") == expected
