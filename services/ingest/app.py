"""The ingest HTTP API: thin routes over EventIntake; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CollectorRegistry

from services.ingest.intake import EventIntake
from services.ingest.metrics import IngestMetrics
from services.ingest.openapi import (
    EVENT_RESPONSES,
    LOGIN_EXAMPLE,
    PURCHASE_EXAMPLE,
    SCHEMA_RESPONSES,
    SUPPORT_EXAMPLE,
    Accepted,
    install_openapi,
    request_body,
)
from services.ingest.parsing import EventParser, read_limited, require_json
from services.ingest.publisher import KafkaPublisher, Publisher
from services.ingest.settings import IngestSettings
from shared.clock import Clock, clock_for
from shared.contracts import EVENT_MODELS
from shared.http import (
    KEYED_NO_UNKNOWN_QUERY,
    NO_UNKNOWN_QUERY,
    ApiKeys,
    ProblemError,
    RequestTimer,
    SourceDep,
    install_problem_handlers,
    probes_router,
)
from shared.metrics import new_registry
from shared.tracing import SpanKind, Tracer, http_trace_headers, make_tracer

DESCRIPTION = (
    "Upstream order, login and support systems POST customer events here. A 202 means the "
    "broker acknowledged every event; errors are RFC 9457 problem documents."
)


def create_app(
    settings: IngestSettings,
    *,
    publisher: Publisher | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    tracer: Tracer | None = None,
) -> FastAPI:
    """The ingest app; a publisher or tracer passed in is the caller's to start and stop."""
    registry = registry or new_registry()
    metrics = IngestMetrics.create(registry)
    owned = publisher is None
    publisher = publisher or KafkaPublisher(
        settings, timeout_s=settings.publish_timeout_s, check_timeout_s=settings.ready_timeout_s
    )
    metrics.broker_available.set_function(lambda: float(publisher.available))
    parser = EventParser.create(
        max_events=settings.max_batch_events,
        max_future_seconds=settings.max_future_seconds,
        max_past_days=settings.max_past_days,
    )
    intake = EventIntake(
        parser, publisher, metrics, clock or clock_for(settings.now), settings.retry_after_s
    )
    app = FastAPI(
        title="Tierstream ingest",
        version="1",
        description=DESCRIPTION,
        lifespan=_lifespan(publisher) if owned else None,
        redirect_slashes=False,  # a 404 problem, not a bare 307 to the scheme it came on
    )
    _install(app, settings, intake, registry, tracer or make_tracer("ingest"))
    install_openapi(app, parser.batch_model)
    return app


def _install(
    app: FastAPI,
    settings: IngestSettings,
    intake: EventIntake,
    registry: CollectorRegistry,
    tracer: Tracer,
) -> None:
    """Keys, error handlers, routes and request timing."""
    app.state.api_keys = ApiKeys(settings.api_key_map(), allow_anonymous=settings.allow_anonymous)
    intake.metrics.start_at_zero(app.state.api_keys.sources())
    install_problem_handlers(app)

    async def ready() -> dict[str, bool]:
        return {"kafka": await intake.publisher.check()}

    app.include_router(probes_router(registry, ready, open_probes=settings.open_probes))
    app.include_router(events_router(intake, settings.max_body_bytes, tracer))
    app.include_router(schemas_router())
    app.add_middleware(RequestTimer, histogram=intake.metrics.request_seconds)


def _lifespan(publisher: Publisher) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.stop()

    return lifespan


def events_router(intake: EventIntake, max_body_bytes: int, tracer: Tracer) -> APIRouter:
    """POST /v1/events and /v1/events/batch."""
    router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=KEYED_NO_UNKNOWN_QUERY)

    async def body_of(request: Request) -> bytes:
        require_json(request.headers.get("content-type"), request.headers.get("content-encoding"))
        return await read_limited(
            request.stream(), request.headers.get("content-length"), max_body_bytes
        )

    @router.post(
        "",
        status_code=202,
        response_model=Accepted,
        responses=EVENT_RESPONSES,
        summary="Send one event",
        openapi_extra=request_body(
            "CustomerEvent",
            {"purchase": PURCHASE_EXAMPLE, "login": LOGIN_EXAMPLE, "support": SUPPORT_EXAMPLE},
        ),
    )
    async def post_event(request: Request, source: SourceDep) -> Accepted:
        ids = await _accept(request, source, batch=False)
        return Accepted(accepted=len(ids), event_ids=ids)

    @router.post(
        "/batch",
        status_code=202,
        response_model=Accepted,
        responses=EVENT_RESPONSES,
        summary="Send a batch of events, all or nothing",
        openapi_extra=request_body(
            "EventBatch", {"mixed": {"events": [PURCHASE_EXAMPLE, LOGIN_EXAMPLE, SUPPORT_EXAMPLE]}}
        ),
    )
    async def post_batch(request: Request, source: SourceDep) -> Accepted:
        ids = await _accept(request, source, batch=True)
        return Accepted(accepted=len(ids), event_ids=ids)

    async def _accept(request: Request, source: str, *, batch: bool) -> list[str]:
        """Accept a body inside a span continuing the caller's `traceparent`, if any."""
        body = await body_of(request)
        parent = http_trace_headers(request.headers)
        with tracer.span("ingest.publish", parent=parent, kind=SpanKind.PRODUCER) as trace:
            return await intake.accept(body, source=source, batch=batch, trace=trace)

    return router


@cache
def event_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema (validation mode) of one event type."""
    return EVENT_MODELS[event_type].model_json_schema(mode="validation")


def schemas_router() -> APIRouter:
    """GET /v1/schemas and /v1/schemas/{event_type}: the JSON Schema of each event type."""
    router = APIRouter(prefix="/v1/schemas", tags=["schemas"], dependencies=NO_UNKNOWN_QUERY)

    @router.get("", summary="JSON Schema of every event type")
    async def all_schemas() -> dict[str, dict[str, Any]]:
        return {name: event_schema(name) for name in EVENT_MODELS}

    @router.get(
        "/{event_type}", summary="JSON Schema of one event type", responses=SCHEMA_RESPONSES
    )
    async def one_schema(event_type: str) -> dict[str, Any]:
        if event_type not in EVENT_MODELS:
            raise ProblemError(
                404, "Unknown event type", f"Known types: {', '.join(EVENT_MODELS)}."
            )
        return event_schema(event_type)

    return router
