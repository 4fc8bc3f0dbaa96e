"""The actions HTTP app: task API, enrolments, alerts, probes; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.actions.api import api_router
from services.actions.db import Pool, RequestDatabase, create_api_pool, database_ready
from services.actions.settings import ActionsSettings
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
from shared.pg import TRANSIENT_DB_ERRORS

DESCRIPTION = (
    "Tasks for sales and support teams (list, assign, complete, cancel), follow-up sequence "
    "enrolments with their steps, and alert deliveries. Errors are RFC 9457 problem documents."
)


def create_app(
    settings: ActionsSettings,
    *,
    pool: Pool | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    ready: ReadyCheck | None = None,
) -> FastAPI:
    """The actions app. `pool` is the API's own (`create_api_pool`); one passed in is the
    caller's to close, else the app opens one for its lifespan."""
    registry = registry or new_registry()
    app = FastAPI(
        title="Tierstream actions",
        version="1",
        description=DESCRIPTION,
        lifespan=None if pool is not None else _own_pool(settings),
        redirect_slashes=False,  # a 404 problem, not a bare 307 to the scheme it came on
    )
    app.state.database = RequestDatabase(pool, settings.api_db_timeout_s) if pool else None
    app.state.clock = clock or clock_for(settings.now)
    app.state.crm_push = settings.crm_webhook_url is not None  # task changes go to the CRM
    app.state.api_keys = ApiKeys(settings.api_key_map(), allow_anonymous=settings.allow_anonymous)
    install_problem_handlers(app, database_errors=TRANSIENT_DB_ERRORS)

    async def database() -> dict[str, bool]:
        return {"database": await database_ready(app.state.database.pool)}

    app.include_router(probes_router(registry, ready or database, open_probes=settings.open_probes))
    app.include_router(api_router())
    app.add_middleware(BodyLimit, limit=API_BODY_MAX_BYTES)
    app.add_middleware(RequestTimer, histogram=request_duration(registry, "actions"))
    return app


def _own_pool(
    settings: ActionsSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_api_pool(
            settings.database_url, size=settings.api_db_pool_size, within=settings.api_db_timeout_s
        )
        app.state.database = RequestDatabase(pool, settings.api_db_timeout_s)
        try:
            yield
        finally:
            await pool.close()

    return lifespan
