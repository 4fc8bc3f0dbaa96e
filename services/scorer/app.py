"""The scorer's HTTP app: read API, probes, metrics. Nothing is built at import."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.scorer.api import read_router
from services.scorer.db import TRANSIENT_DB_ERRORS, Pool, RequestDatabase, database_ready
from services.scorer.settings import ScorerSettings
from shared.clock import Clock, clock_for
from shared.http import (
    API_BODY_MAX_BYTES,
    ApiKeys,
    BodyLimit,
    ReadyCheck,
    RequestTimer,
    install_problem_handlers,
    probes_router,
)
from shared.metrics import new_registry, request_duration

DESCRIPTION = """Per-customer features (as of the scorer's now), classification and
tier-change history. Send `Authorization: Bearer <key>`; list endpoints page with
`limit` and the opaque `next_cursor`."""


def database_only(pool: Pool, *, within: float) -> ReadyCheck:
    """Readiness of an app serving the read API alone, with no consumer to ask the broker."""

    async def ready() -> dict[str, bool]:
        return {"database": await database_ready(pool, within=within)}

    return ready


def create_app(
    settings: ScorerSettings,
    *,
    pool: Pool,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    ready: ReadyCheck | None = None,
) -> FastAPI:
    """The scorer app. `pool` is the API's own (`create_pool(..., within=
    settings.api_db_timeout_s)`), the caller's to open and close. `ready`: the /readyz
    checks (the service's: `shared.readiness.readiness`); by default Postgres alone."""
    registry = registry or new_registry()
    app = FastAPI(
        title="Tierstream scorer", version="1", description=DESCRIPTION, redirect_slashes=False
    )  # a 404 problem for a trailing slash, not a bare 307
    app.state.api_keys = ApiKeys(settings.api_key_map(), allow_anonymous=settings.allow_anonymous)
    app.state.database = RequestDatabase(pool, settings.api_db_timeout_s)
    app.state.clock = clock or clock_for(settings.now)
    install_problem_handlers(app, database_errors=TRANSIENT_DB_ERRORS)
    checks = ready or database_only(pool, within=settings.ready_timeout_s)
    app.include_router(probes_router(registry, checks, open_probes=settings.open_probes))
    app.include_router(read_router())
    app.add_middleware(BodyLimit, limit=API_BODY_MAX_BYTES)
    app.add_middleware(RequestTimer, histogram=request_duration(registry, "scorer"))
    return app
