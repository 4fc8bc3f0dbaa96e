"""The scorer's read API and the actions task API while Postgres is down, and the generic
500 path of shared/http.py.

Postgres away (refused connections, cut connections, a timed-out connect) is an outage, not a
bug: a prompt 503 problem with Retry-After, one error log line naming the error, and nothing
of the error, the SQL or the server's address in the body. Any other failure is a 500 problem
whose body says nothing of the error; its traceback goes to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from services.actions.app import create_app as create_actions_app
from services.actions.db import create_api_pool
from services.actions.db import migrate as migrate_actions
from services.actions.settings import ActionsSettings
from services.scorer.app import create_app as create_scorer_app
from services.scorer.db import create_pool as create_scorer_pool
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.db import asyncpg_dsn
from shared.embedded import free_port
from shared.http import PROBLEM_JSON, install_problem_handlers
from shared.migrations import upgrade
from shared.pg import TRANSIENT_DB_ERRORS
from tests.faults.outages import TcpGate
from tests.integration.actions.support import NOW
from tests.support.infra import with_database

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# A hang detector, not a performance bound: refused connections answer in milliseconds, and
# the pools give up connecting after 10 s (shared/pg.py); three times that is a hang.
HANG_BOUND_S = 30.0
# The apps' database budget (the default is 5 s): each call may take a few of it.
BUDGET_S = 1.0
SCORER_CALLS = [
    ("GET", "/v1/customers/x"),
    ("GET", "/v1/customers/acme/eu/42/changes"),
    ("GET", "/v1/customers?value_tier=gold"),
    ("GET", "/v1/changes"),
    ("GET", "/v1/stats/tiers"),
]
ACTIONS_CALLS = [
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/1"),
    ("PATCH", "/v1/tasks/1"),
    ("GET", "/v1/sequences/enrollments"),
    ("GET", "/v1/alerts"),
]
PROBLEM_KEYS = {"type", "title", "status", "detail"}
# Fragments of driver errors, SQL and tracebacks; none may reach a client.
INTERNALS = ("asyncpg", "postgres", "errno", "connect call", "select ", " from ", "traceback",
             "exception", "error:", "127.0.0.1", "localhost", ".s.pgsql")  # fmt: skip


class PostgresGate:
    """A TcpGate in front of the real Postgres server: the apps reach their database only
    through it. `close()` is the server going away (every live connection cut, new ones
    refused); `open()` brings it back on the same port."""

    def __init__(self, server_url: str) -> None:
        url = make_url(server_url)
        socket_dir = url.query.get("host")
        socket = ""
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):  # the embedded server
            socket = str(Path(socket_dir) / f".s.PGSQL.{url.port or 5432}")
        self.port = free_port()
        self._gate = TcpGate(self.port, url.port or 5432, url.host or "127.0.0.1", socket)

    def url_for(self, database_url: str) -> str:
        """`database_url` reached through the gate."""
        url = make_url(database_url)
        gated = url.set(host="127.0.0.1", port=self.port, query={})
        return gated.render_as_string(hide_password=False)

    async def open(self) -> None:
        await self._gate.open()

    async def close(self) -> None:
        await self._gate.close()
        await asyncio.sleep(0.05)  # let the apps' connections see the reset, as they would

    def stall(self) -> None:
        """Postgres stops answering, nothing is cut (a hung server, dropped packets)."""
        self._gate.stall()

    async def reopen(self) -> None:
        await self.close()
        await self.open()


@pytest.fixture
async def gate(pg_server_url: str) -> AsyncIterator[PostgresGate]:
    gate = PostgresGate(pg_server_url)
    await gate.open()
    yield gate
    await gate.close()


@pytest.fixture
async def migrated(database_url: str) -> str:
    """The test's fresh database holding the scorer's and the actions' tables."""
    await asyncio.to_thread(upgrade, database_url, "scorer")
    await migrate_actions(database_url)
    return database_url


Apps = dict[str, httpx.AsyncClient]


@pytest.fixture
async def apps(migrated: str, gate: PostgresGate) -> AsyncIterator[Apps]:
    """The scorer and actions apps, their pools reaching the database through the gate."""
    async with _apps(gate.url_for(migrated)) as clients:
        yield clients


@contextlib.asynccontextmanager
async def _apps(url: str) -> AsyncIterator[Apps]:
    """The scorer and actions apps on the database at `url`.

    `raise_app_exceptions=False`: the client sees what a server sends for an unhandled error
    (Starlette answers with the handler's response, then re-raises to the server)."""
    common = {"database_url": url, "api_keys": f"test:{KEY}", "api_db_timeout_s": BUDGET_S}
    scorer_settings = ScorerSettings.model_validate(common)
    actions_settings = ActionsSettings.model_validate(common)
    scorer_pool = await create_scorer_pool(
        url, size=2, application_name="test-scorer", within=scorer_settings.api_db_timeout_s
    )
    actions_pool = await create_api_pool(url, size=2, within=actions_settings.api_db_timeout_s)
    scorer = create_scorer_app(scorer_settings, pool=scorer_pool, clock=FixedClock(NOW))
    actions = create_actions_app(actions_settings, pool=actions_pool, clock=FixedClock(NOW))
    try:
        async with (
            _client(scorer, "http://scorer") as scorer_client,
            _client(actions, "http://actions") as actions_client,
        ):
            yield {"scorer": scorer_client, "actions": actions_client}
    finally:
        await asyncio.wait_for(asyncio.gather(scorer_pool.close(), actions_pool.close()), 30)


def _client(app: FastAPI, base_url: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=base_url, headers=AUTH)


async def _call_all(apps: Apps) -> list[tuple[str, httpx.Response]]:
    """Every route of both APIs, concurrently, each bounded by the hang detector."""
    calls = [("scorer", m, p) for m, p in SCORER_CALLS]
    calls += [("actions", m, p) for m, p in ACTIONS_CALLS]

    async def one(app: str, method: str, path: str) -> tuple[str, httpx.Response]:
        body = {"action": "complete"} if method == "PATCH" else None
        request = apps[app].request(method, path, json=body)
        return f"{app} {method} {path}", await asyncio.wait_for(request, HANG_BOUND_S)

    return await asyncio.gather(*(one(*call) for call in calls))


async def _healthy(apps: Apps) -> None:
    """The path through the gate works: the answers come from the database."""
    missing = await apps["scorer"].get("/v1/customers/x")
    assert missing.status_code == 404, missing.text
    tasks = await apps["actions"].get("/v1/tasks")
    assert (tasks.status_code, tasks.json()["items"]) == (200, [])


def _assert_reveals_nothing(text: str, *secrets: str) -> None:
    lowered = text.lower()
    for fragment in (*INTERNALS, *secrets):
        assert fragment.lower() not in lowered, (fragment, text)


def _errors(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["log_level"] == "error" and e["event"] == event]


async def test_both_apis_answer_a_postgres_outage_with_a_prompt_503_and_recover(
    apps: Apps, gate: PostgresGate, migrated: str
) -> None:
    await _healthy(apps)  # the pools now hold live connections, which the outage cuts
    await gate.close()
    with capture_logs() as logs:
        answers = await _call_all(apps)
    database = make_url(migrated).database or ""
    for call, response in answers:
        assert response.status_code == 503, (call, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON, call
        assert response.headers["retry-after"].isdigit(), call
        assert int(response.headers["retry-after"]) >= 1, call
        body = response.json()
        assert set(body) == PROBLEM_KEYS and body["status"] == 503, (call, body)
        _assert_reveals_nothing(response.text, database, str(gate.port), "refused")
    logged = _errors(logs, "database unavailable")
    assert len(logged) == len(answers), logs
    for entry in logged:  # the log names the error the client was spared
        error = str(entry["error"])
        assert "Error" in error or "refused" in error.lower(), entry
        for _, response in answers:
            assert error not in response.text
    await gate.open()  # Postgres is back: the same apps answer from it again, no restart
    await _healthy(apps)


async def test_both_apis_answer_an_unresponsive_postgres_with_a_503_within_their_budget(
    apps: Apps, gate: PostgresGate
) -> None:
    """Postgres stops answering without cutting anything. Without a bound of their own the
    requests waited for the pools' 60 s command timeout and then for the cancel request:
    one to two minutes each. With a 1 s budget (waiting for a connection, each statement,
    handing the connection back) each call answers a 503 well inside the hang detector."""
    await _healthy(apps)  # live connections, which now stop answering
    gate.stall()
    with capture_logs() as logs:
        answers = await _call_all(apps)
    for call, response in answers:
        assert response.status_code == 503, (call, response.text)
        assert response.headers["retry-after"].isdigit(), call
        _assert_reveals_nothing(response.text, str(gate.port))
    assert len(_errors(logs, "database unavailable")) == len(answers), logs
    await gate.reopen()  # Postgres answers again: the same apps recover, no restart
    await _healthy(apps)


async def test_both_apis_answer_postgres_refusing_more_connections_with_a_503(
    migrated: str,
) -> None:
    # SQLSTATE 53300 (the server's or the role's connection limit reached) is an outage too.
    role = f"full_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(migrated))
    await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        url = make_url(migrated).set(username=role).render_as_string(hide_password=False)
        async with _apps(url) as apps:
            with capture_logs() as logs:
                answers = await _call_all(apps)
        for call, response in answers:
            assert response.status_code == 503, (call, response.text)
            assert response.headers["retry-after"].isdigit(), call
            _assert_reveals_nothing(response.text, role, "too many")
        assert len(_errors(logs, "database unavailable")) == len(answers), logs
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_both_apis_answer_a_read_only_server_with_a_503_and_recover(migrated: str) -> None:
    # A failover can leave the address on a standby: its reads worked, every write failed,
    # and the probes said ready. Its connections are refused as an outage now.
    admin = await asyncpg.connect(asyncpg_dsn(migrated))
    database = make_url(migrated).database
    await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        async with _apps(migrated) as apps:
            with capture_logs() as logs:
                answers = await _call_all(apps)
            for call, response in answers:
                assert response.status_code == 503, (call, response.text)
                assert response.headers["retry-after"].isdigit(), call
                _assert_reveals_nothing(response.text, "read-only", "target")
            assert len(_errors(logs, "database unavailable")) == len(answers), logs
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            await _healthy(apps)  # writable again: the same pools connect, no restart
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()


async def test_a_dropped_database_is_a_logged_500_that_names_nothing(
    apps: Apps, pg_server_url: str, migrated: str
) -> None:
    """A database that no longer exists is no outage a retry outlives: 500, not 503."""
    await _healthy(apps)
    database = make_url(migrated).database or ""
    admin = await asyncpg.connect(asyncpg_dsn(with_database(pg_server_url, "postgres")))
    try:  # FORCE terminates the apps' connections; new ones are refused: no such database
        await asyncio.wait_for(admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)'), 30)
    finally:
        await admin.close()
    with capture_logs() as logs:
        answers = await _call_all(apps)
    for call, response in answers:
        assert response.status_code == 500, (call, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON, call
        assert "retry-after" not in response.headers, call
        body = response.json()
        assert set(body) == PROBLEM_KEYS and body["status"] == 500, (call, body)
        _assert_reveals_nothing(response.text, database, "does not exist")
    logged = _errors(logs, "unhandled error")
    assert len(logged) == len(answers), logs
    assert all(isinstance(e["exc_info"], asyncpg.PostgresError) for e in logged), logged
    assert all(database in str(e["exc_info"]) for e in logged)  # the log keeps what it was


SECRET = "password=hunter2 host=db.internal port=6543"


def _failing_app(exc: BaseException) -> FastAPI:
    """An app set up as the scorer's and actions' are, with one route that raises `exc`."""
    app = FastAPI()
    install_problem_handlers(app, database_errors=TRANSIENT_DB_ERRORS)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


async def _boom(exc: BaseException) -> httpx.Response:
    transport = httpx.ASGITransport(app=_failing_app(exc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await asyncio.wait_for(client.get("/boom"), HANG_BOUND_S)


async def test_an_unhandled_error_is_a_500_problem_with_no_detail_and_a_logged_traceback() -> None:
    error = RuntimeError(f"bug while reading {SECRET}")
    with capture_logs() as logs:
        response = await _boom(error)
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "retry-after" not in response.headers
    assert response.json() == {
        "type": "https://tierstream.dev/problems/500",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "An unexpected error occurred; it was logged.",
    }
    _assert_reveals_nothing(response.text, SECRET, "hunter2", "RuntimeError", "bug while")
    [entry] = _errors(logs, "unhandled error")
    assert entry["exc_info"] is error  # rendered with its traceback by the log formatter


NOT_TRANSIENT = asyncpg.UndefinedTableError(f'relation "{SECRET}" does not exist')
UNAVAILABLE: list[Callable[[], BaseException]] = [
    lambda: ConnectionRefusedError(111, f"Connect call failed {SECRET}"),
    lambda: TimeoutError(f"connect to {SECRET} timed out"),
    lambda: asyncpg.ConnectionDoesNotExistError(f"connection to {SECRET} was closed"),
    lambda: asyncpg.CannotConnectNowError(f"{SECRET}: the database system is starting up"),
    lambda: asyncpg.AdminShutdownError(f"{SECRET}: terminating connection"),
]


@pytest.mark.parametrize("make", UNAVAILABLE, ids=lambda f: type(f()).__name__)
async def test_postgres_being_away_is_a_503_problem_with_retry_after(
    make: Callable[[], BaseException],
) -> None:
    error = make()
    with capture_logs() as logs:
        response = await _boom(error)
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert set(body) == PROBLEM_KEYS and body["status"] == 503
    _assert_reveals_nothing(response.text, SECRET, "hunter2", type(error).__name__)
    [entry] = _errors(logs, "database unavailable")
    assert SECRET in str(entry["error"]) and type(error).__name__ in str(entry["error"])


async def test_a_postgres_error_that_is_no_outage_stays_a_500() -> None:
    with capture_logs() as logs:
        response = await _boom(NOT_TRANSIENT)
    assert response.status_code == 500 and "retry-after" not in response.headers
    _assert_reveals_nothing(response.text, SECRET, "relation")
    assert [e["exc_info"] for e in _errors(logs, "unhandled error")] == [NOT_TRANSIENT]
