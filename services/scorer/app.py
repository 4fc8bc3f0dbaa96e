"""The scorer's HTTP app: read API, probes, metrics. Nothing is built at import."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.scorer.api import read_router
from services.scorer.db import TRANSIENT_DB_ERRORS, Pool, RequestDatabase, database_ready
from services.scorer.settings import ScorerSettings
from shared.clock import Clock, clock_for
from shared.http import (
    ApiKeys,
    ReadyCheck,
    RequestTimer,
    install_problem_handlers,
    probes_router,
)
from shared.metrics import new_registry, request_duration

DESCRIPTION = """Per-customer features (as of the scorer's now), classification and
tier-change history. Send `Authorization: Bearer <key>`; list endpoints page with
`limit` and the opaque `next_cursor`."""


async def kafka_reachable(bootstrap_servers: str, *, within: float = 1.0) -> bool:
    """True when one bootstrap server accepts a TCP connection within `within` seconds."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), within)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
    return False


def default_ready(settings: ScorerSettings, pool: Pool) -> ReadyCheck:
    """Readiness: Postgres answers and the broker accepts connections."""

    async def ready() -> dict[str, bool]:
        database, kafka = await asyncio.gather(
            database_ready(pool), kafka_reachable(settings.kafka_bootstrap_servers)
        )
        return {"database": database, "kafka": kafka}

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
    settings.api_db_timeout_s)`), the caller's to open and close."""
    registry = registry or new_registry()
    app = FastAPI(
        title="Tierstream scorer", version="1", description=DESCRIPTION, redirect_slashes=False
    )  # a 404 problem for a trailing slash, not a bare 307
    app.state.api_keys = ApiKeys(settings.api_key_map(), allow_anonymous=settings.allow_anonymous)
    app.state.database = RequestDatabase(pool, settings.api_db_timeout_s)
    app.state.clock = clock or clock_for(settings.now)
    install_problem_handlers(app, database_errors=TRANSIENT_DB_ERRORS)
    checks = ready or default_ready(settings, pool)
    app.include_router(probes_router(registry, checks, open_probes=settings.open_probes))
    app.include_router(read_router())
    app.add_middleware(RequestTimer, histogram=request_duration(registry, "scorer"))
    return app
