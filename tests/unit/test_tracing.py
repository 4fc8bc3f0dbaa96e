"""Trace context in Kafka headers: passed on when tracing is off, continued when it is on."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.tracing import TracingSettings, extract, http_trace_headers, inject, make_tracer


def _parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None
    return int(span.parent.span_id)


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


UPSTREAM = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = int("4bf92f3577b34da6a3ce929d0e0e4736", 16)


def test_tracing_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERSTREAM_TRACING", raising=False)
    assert TracingSettings().mode == "off"
    assert not make_tracer("ingest").enabled


def test_off_passes_an_upstream_traceparent_on_unchanged() -> None:
    tracer = make_tracer("scorer", TracingSettings(mode="off"))
    parent = [("ce_id", b"e-1"), ("traceparent", UPSTREAM.encode()), ("tracestate", b"a=1")]
    with tracer.span("scorer.apply", parent=parent) as headers:
        assert headers == [("traceparent", UPSTREAM.encode()), ("tracestate", b"a=1")]


def test_off_without_a_parent_adds_no_header() -> None:
    with make_tracer("ingest", TracingSettings(mode="off")).span("ingest.publish") as headers:
        assert headers == []


def test_a_malformed_traceparent_is_dropped_not_forwarded() -> None:
    bad = [("traceparent", b"00-not-a-trace-01")]
    with make_tracer("scorer").span("scorer.apply", parent=bad) as headers:
        assert headers == []


def test_http_headers_become_kafka_trace_headers() -> None:
    got = http_trace_headers({"traceparent": UPSTREAM, "content-type": "application/json"})
    assert got == [("traceparent", UPSTREAM.encode())]
    assert inject(extract(got)) == got


def test_on_one_trace_spans_ingest_scorer_and_actions() -> None:
    exporter = InMemorySpanExporter()
    ingest, scorer, actions = (make_tracer(s, exporter=exporter) for s in ("i", "s", "a"))
    with ingest.span("ingest.publish", parent=http_trace_headers({"traceparent": UPSTREAM})) as h1:
        pass
    with scorer.span("scorer.apply", parent=[("ce_id", b"x"), *h1]) as h2:
        pass
    with actions.span("actions.plan", parent=h2):
        pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"ingest.publish", "scorer.apply", "actions.plan"}
    assert {s.context.trace_id for s in spans.values() if s.context} == {TRACE_ID}
    assert _parent_id(spans["ingest.publish"]) == int("00f067aa0ba902b7", 16)
    assert _parent_id(spans["scorer.apply"]) == _span_id(spans["ingest.publish"])
    assert _parent_id(spans["actions.plan"]) == _span_id(spans["scorer.apply"])


def test_on_without_a_parent_starts_a_new_trace_carried_in_headers() -> None:
    exporter = InMemorySpanExporter()
    with make_tracer("ingest", exporter=exporter).span("ingest.publish") as headers:
        pass
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    assert dict(headers)["traceparent"].decode().split("-")[1] == f"{span.context.trace_id:032x}"


@pytest.mark.parametrize("mode", ["console", "otlp"])
def test_exporting_modes_build_a_recording_tracer(mode: str) -> None:
    tracer = make_tracer("actions", TracingSettings.model_validate({"TIERSTREAM_TRACING": mode}))
    try:
        assert tracer.enabled
    finally:
        tracer.shutdown()
