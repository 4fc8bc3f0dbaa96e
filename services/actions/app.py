"""The actions HTTP app: task API, enrolments, alerts, probes; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.actions.api import api_router
from services.actions.db import Pool, create_pool, database_ready
from services.actions.settings import ActionsSettings
from shared.clock import Clock, clock_for
from shared.http import ApiKeys, ReadyCheck, install_problem_handlers, probes_router
from shared.metrics import new_registry
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
    """The actions app; a pool passed in is the caller's to close."""
    registry = registry or new_registry()
    app = FastAPI(
        title="Tierstream actions",
        version="1",
        description=DESCRIPTION,
        lifespan=None if pool is not None else _own_pool(settings),
    )
    app.state.pool = pool
    app.state.clock = clock or clock_for(settings.now)
    app.state.api_keys = ApiKeys(settings.api_key_map(), allow_anonymous=settings.allow_anonymous)
    install_problem_handlers(app, database_errors=TRANSIENT_DB_ERRORS)

    async def database() -> dict[str, bool]:
        return {"database": await database_ready(app.state.pool)}

    app.include_router(probes_router(registry, ready or database, open_probes=settings.open_probes))
    app.include_router(api_router())
    return app


def _own_pool(
    settings: ActionsSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(
            settings.database_url, size=settings.db_pool_size, application_name="tierstream-actions"
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    return lifespan
