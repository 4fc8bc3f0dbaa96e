"""Optional tracing: W3C trace context carried in Kafka headers, OpenTelemetry spans when on.

Off by default (`TIERSTREAM_TRACING=off`): no spans are recorded, but a valid incoming
`traceparent` is passed on unchanged, so a trace started upstream survives the hop through
Tierstream (`tracestate` reaches the scorer, which keeps only the `traceparent`). `console`
prints spans; `otlp` exports them to `OTEL_EXPORTER_OTLP_ENDPOINT` (needs the `tracing`
extra: opentelemetry-sdk and the OTLP exporter; the OpenTelemetry API alone ships with
FastAPI).

How a service carries the context (ingest -> scorer -> actions):
- ingest: `with tracer.span("ingest.publish", parent=http_trace_headers(request.headers))
  as trace:` and add `trace` to each record's headers (`cloudevent_headers(..., extra=trace)`);
- scorer: no span of its own (one batch applies events of many traces); it keeps the
  `traceparent` of the event behind each tier change in the outbox, and the relay publishes
  the change with it;
- actions: `with tracer.span("actions.plan", parent=record.headers):`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

Headers = list[tuple[str, bytes]]
TRACE_HEADERS = ("traceparent", "tracestate")
SpanKind = trace.SpanKind
_PROPAGATOR = TraceContextTextMapPropagator()


class TracingSettings(BaseSettings):
    """Whether and where spans go; read from the environment like the services' settings."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    mode: Literal["off", "console", "otlp"] = Field(
        "off",
        validation_alias="TIERSTREAM_TRACING",
        description="off (default: pass trace context on, record nothing), console, otlp.",
    )


def extract(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The trace context carried by Kafka record headers (empty when absent or invalid)."""
    carrier = {
        key: value.decode(errors="replace")
        for key, value in headers or ()
        if key in TRACE_HEADERS and value is not None
    }
    return _PROPAGATOR.extract(carrier)


def inject(context: Context | None = None) -> Headers:
    """Kafka headers for the trace context (the current one by default); [] without one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return [(key, carrier[key].encode()) for key in TRACE_HEADERS if key in carrier]


def http_trace_headers(headers: Mapping[str, str]) -> Headers:
    """The W3C trace headers of an HTTP request, shaped like Kafka headers."""
    return [(key, headers[key].encode()) for key in TRACE_HEADERS if key in headers]


class Tracer:
    """Spans of one service; without a provider it only passes incoming context on."""

    def __init__(self, service: str, provider: TracerProvider | None = None) -> None:
        self.service = service
        self._provider = provider
        self._tracer = provider.get_tracer(f"tierstream.{service}") if provider else None

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self._tracer is not None

    @contextmanager
    def span(
        self,
        name: str,
        *,
        parent: Sequence[tuple[str, bytes | None]] | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Mapping[str, str | int] | None = None,
    ) -> Iterator[Headers]:
        """Run a span continuing the trace in `parent`; yields headers for records sent in it."""
        context = extract(parent)
        if self._tracer is None:
            yield inject(context)
            return
        with self._tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=dict(attributes or {})
        ):
            yield inject()

    def shutdown(self) -> None:
        """Flush and stop the exporter (call once, when the service stops)."""
        if self._provider is not None:
            self._provider.shutdown()


def make_tracer(
    service: str,
    settings: TracingSettings | None = None,
    *,
    exporter: SpanExporter | None = None,
) -> Tracer:
    """The service's Tracer per TIERSTREAM_TRACING; `exporter` overrides it (tests)."""
    mode = (settings or TracingSettings()).mode
    if mode == "off" and exporter is None:
        return Tracer(service)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise SystemExit(_missing(mode)) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": f"tierstream-{service}"}))
    if exporter is not None:  # synchronous export: a test reads spans right after they end
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(mode)))
    return Tracer(service, provider)


def _exporter(mode: str) -> SpanExporter:
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise SystemExit(_missing(mode)) from exc
    return OTLPSpanExporter()  # endpoint and headers from the standard OTEL_* variables


def _missing(mode: str) -> str:
    return (
        f"TIERSTREAM_TRACING={mode} needs the OpenTelemetry SDK and exporter: "
        "pip install 'tierstream[tracing]' (or set TIERSTREAM_TRACING=off)"
    )
