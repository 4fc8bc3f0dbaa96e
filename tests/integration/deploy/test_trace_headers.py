"""Trace context survives a real broker: the W3C headers a span yields come back unchanged."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.kafka import cloudevent_headers
from shared.tracing import extract, make_tracer
from tests.integration.deploy.pipeline import NOW
from tests.support.infra import unique_namespace


async def _roundtrip(kafka: str, headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    topic = f"{unique_namespace()}.trace.v1"
    producer = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=False)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"{}", key=b"c-1", headers=headers)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), 15)
        return list(record.headers)
    finally:
        await consumer.stop()


async def test_trace_context_crosses_the_broker_from_ingest_to_the_scorer(
    kafka_bootstrap: str,
) -> None:
    exporter = InMemorySpanExporter()
    ingest, scorer = (
        make_tracer("ingest", exporter=exporter),
        make_tracer("scorer", exporter=exporter),
    )
    with ingest.span("ingest.publish", kind=trace.SpanKind.PRODUCER) as trace_headers:
        headers = cloudevent_headers(
            ce_id="e-1", ce_source="test", ce_type="t", ce_time=NOW, extra=trace_headers
        )
    received = await _roundtrip(kafka_bootstrap, headers)
    with scorer.span("scorer.apply", parent=received, kind=trace.SpanKind.CONSUMER):
        pass
    published, consumed = exporter.get_finished_spans()
    assert published.context and consumed.context and consumed.parent
    assert consumed.context.trace_id == published.context.trace_id
    assert consumed.parent.span_id == published.context.span_id
    remote = trace.get_current_span(extract(received)).get_span_context()
    assert remote.is_remote and remote.trace_id == published.context.trace_id
