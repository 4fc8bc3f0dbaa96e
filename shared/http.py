"""HTTP plumbing every service shares: API-key auth, problem+json errors, probes, metrics."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import get_logger
from shared.metrics import render

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
# Retry-After of the 503 answered while the database is away (ingest's default for its 503).
DATABASE_RETRY_AFTER_S = 5
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ProblemError(Exception):
    """Raise to answer with an RFC 9457 problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers, self.type_ = errors, headers, type_

    def response(self) -> JSONResponse:
        """This problem as its problem+json answer."""
        return problem(self.status, self.title, self.detail, errors=self.errors,
                       headers=self.headers, type_=self.type_)  # fmt: skip


def problem(
    status: int,
    title: str,
    detail: str = "",
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    type_: str | None = None,
) -> JSONResponse:
    """An `application/problem+json` response (RFC 9457)."""
    body: dict[str, Any] = {
        "type": type_ or f"https://tierstream.dev/problems/{status}",
        "title": title,
        "status": status,
        "detail": detail or title,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def invalid_input(field: str, reason: str, kind: str) -> ProblemError:
    """The 422 for input FastAPI's validation let through, shaped as its own:
    `errors: [{field, reason, type}]`."""
    error = {"field": field, "reason": reason, "type": kind}
    return ProblemError(422, "Invalid request", "The request failed validation.", errors=[error])


def invalid_query(name: str, reason: str, kind: str) -> ProblemError:
    """`invalid_input` for the query parameter `name` (field `query.<name>`)."""
    return invalid_input(f"query.{name}", reason, kind)


async def refuse_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not read, or given twice (a router
    dependency).

    FastAPI ignores them: a misspelt filter (`/v1/tasks?customer=c-1`) answered with every
    task, and `POST /v1/events?dry_run=true` published.
    """
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    known = _QUERY_NAMES.get(route.unique_id)
    if known is None:
        known = _QUERY_NAMES[route.unique_id] = _query_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            raise invalid_query(name, "Unknown query parameter for this route", "query_unknown")
    # No route reads a list: FastAPI took the last of `?status=open&status=done` and answered
    # with done tasks only, so a client's bug passed for a filter.
    if len(request.query_params) < len(request.query_params.multi_items()):
        names = [name for name, _ in request.query_params.multi_items()]
        repeated = next(name for name in names if names.count(name) > 1)
        raise invalid_query(repeated, "Given more than once; it takes one value", "query_repeated")


_QUERY_NAMES: dict[str, frozenset[str]] = {}  # per route (unique_id): the names it reads


def _query_names(dependant: Dependant) -> frozenset[str]:
    own = {param.alias for param in dependant.query_params}
    return frozenset(own.union(*(_query_names(d) for d in dependant.dependencies)))


NO_UNKNOWN_QUERY = [Depends(refuse_unknown_query)]  # an API router's `dependencies`

# The largest request body the scorer's and actions' APIs read (`BodyLimit`): theirs are
# small JSON objects (a task update, a requeue filter). FastAPI reads a JSON body before the
# route's dependencies run, the key check among them, so without a bound anyone could make
# the service hold any amount of memory.
API_BODY_MAX_BYTES = 64 * 1024


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as [{field, reason, type}] with a dotted field path: `query.limit`,
    a body's own field names (`assignee`)."""
    return [
        {"field": _field(err, exc.body), "reason": err.get("msg", "invalid"),
         "type": err.get("type")}
        for err in exc.errors()
    ]  # fmt: skip


def _field(err: Any, body: object) -> str:
    loc = list(err.get("loc", ()))
    if loc[:1] != ["body"]:
        return ".".join(map(str, loc))
    loc = loc[1:]
    if err.get("type") == "union_tag_invalid":  # the discriminator's value matched no member
        return str(err.get("ctx", {}).get("discriminator", "body")).strip("'")
    # A discriminated union puts the member's tag in the path (`assign.assignee`): the body
    # has no such key, it is the value the body gave its discriminator.
    if loc and isinstance(body, dict) and loc[0] not in body and loc[0] in body.values():
        loc = loc[1:]
    return ".".join(map(str, loc)) or "body"


def _malformed_json(exc: RequestValidationError) -> ProblemError | None:
    """The 400 for a body that is not JSON at all (pydantic reports where it stopped)."""
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where, error = err.get("loc", ("", "?"))[-1], err.get("ctx", {}).get("error")
            return ProblemError(400, "Malformed JSON", f"Invalid JSON: {error} at byte {where}")
    return None


def install_problem_handlers(
    app: FastAPI, *, database_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Turn every error FastAPI raises into problem+json, never a bare 500 for bad input.

    `database_errors` (an app's `TRANSIENT_DB_ERRORS`) mean the database is away, an outage
    rather than a bug: 503 with Retry-After, never the error's text."""

    async def _unavailable(_: Request, exc: Exception) -> Response:
        log.error("database unavailable", error=f"{type(exc).__name__}: {exc}")
        return problem(
            503,
            "Service Unavailable",
            f"The database is unavailable; retry after {DATABASE_RETRY_AFTER_S} s.",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    for error in database_errors:
        if issubclass(error, Exception):  # what a handler can catch; all of TRANSIENT_DB_ERRORS
            app.add_exception_handler(error, _unavailable)

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        if malformed := _malformed_json(exc):
            return malformed.response()
        return problem(
            422, "Invalid request", "The request failed validation.", errors=validation_errors(exc)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        # A bug, not bad input: log it with its traceback, answer problem+json without details.
        log.error("unhandled error", exc_info=exc)
        return problem(500, "Internal Server Error", "An unexpected error occurred; it was logged.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, _RaisedProblem):
            return exc.problem.response()
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=headers)

    app.add_middleware(Utf8Only)


def body_too_large(limit: int) -> ProblemError:
    """The 413 for a request body over `limit` bytes."""
    return ProblemError(413, "Request body too large", f"The body must not exceed {limit} bytes.")


def declares_more_than(content_length: str | None, limit: int) -> bool:
    """Whether a Content-Length header's value says the body is over `limit` bytes."""
    length = (content_length or "").strip()
    return length.isascii() and length.isdigit() and int(length) > limit


class _RaisedProblem(StarletteHTTPException):
    """A ProblemError raised where only an HTTPException gets through: FastAPI passes one
    raised while it reads the body on to the handlers, and makes any other error a 400."""

    def __init__(self, problem: ProblemError) -> None:
        super().__init__(problem.status, problem.detail)
        self.problem = problem


class BodyLimit:
    """A 413 problem for a request body over `limit` bytes, before more of it is read: at
    once when its Content-Length says so, else as soon as the streamed bytes pass it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declares_more_than(declared, self.limit):
            await body_too_large(self.limit).response()(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _RaisedProblem(body_too_large(self.limit))
            return message

        await self.app(scope, bounded, send)


class Utf8Only:
    """422 for a path or query whose percent-encoded bytes are not UTF-8. Starlette decodes
    them with U+FFFD in their place: `/v1/customers/a%FFb` looked customer "a\ufffdb" up and
    answered 404, as if the id were valid and merely unknown."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (where := _not_utf8(scope)) is not None:
            refused = invalid_input(where, "Percent-encoded bytes that are not UTF-8", "utf8")
            await refused.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestTimer:
    """ASGI middleware: request duration by route template (never the raw path), method, status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            # The template as the API documents it (`/v1/customers/{customer_id}`), without
            # a parameter's convertor (`{customer_id:customer_id}`), which no one filters on.
            route = getattr(scope.get("route"), "path_format", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.histogram.labels(route, method, str(status)).observe(time.perf_counter() - started)


def _not_utf8(scope: Scope) -> str | None:
    """ "path" or "query" when its percent-decoded bytes are not UTF-8; None when both are."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    parts = [("path", raw_path.split(b"?", 1)[0])]
    parts += [("query", p.replace(b"+", b" ")) for p in scope.get("query_string", b"").split(b"&")]
    for where, raw in parts:
        if b"%" not in raw and raw.isascii():
            continue
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return where
    return None


class ApiKeys:
    """Bearer API keys compared in constant time; returns the key's source name."""

    def __init__(self, keys: dict[str, str], *, allow_anonymous: bool = False) -> None:
        self._keys = [(k.encode(), source) for k, source in keys.items()]
        self.allow_anonymous = allow_anonymous and not keys

    def sources(self) -> list[str]:
        """Every source name a request can be attributed to."""
        return ["anonymous"] if self.allow_anonymous else sorted({s for _, s in self._keys})

    def source_for(self, authorization: str | None) -> str | None:
        if self.allow_anonymous:
            return "anonymous"
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        candidate = token.strip().encode()
        found: str | None = None
        for (
            key,
            source,
        ) in self._keys:  # check every key: the time taken does not depend on which matched
            if hmac.compare_digest(key, candidate):
                found = source
        return found

    async def __call__(self, request: Request) -> str:
        source = self.source_for(request.headers.get("authorization"))
        if source is None:
            raise ProblemError(
                401,
                "Unauthorized",
                "Send a valid API key as 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": 'Bearer realm="tierstream"'},
            )
        return source


# Only documents the scheme in OpenAPI (securitySchemes, each route's `security`), so that
# generated clients and API explorers send the key: ApiKeys reads the header itself.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key (TIERSTREAM_API_KEYS): 'Authorization: Bearer <key>'.",
)


async def require_key(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
) -> str:
    """FastAPI dependency: the caller's source name, or 401."""
    # Must be `async def`: FastAPI runs a plain def in a thread and would inject the coroutine.
    keys: ApiKeys = request.app.state.api_keys
    return await keys(request)


SourceDep = Annotated[str, Depends(require_key)]
# A keyed API router's `dependencies`: the key first (a 401 before a 422 that would tell a
# caller without a key which parameters a route reads), then the query check. The route's
# own `SourceDep` reuses the key's result (FastAPI caches a dependency per request).
KEYED_NO_UNKNOWN_QUERY = [Depends(require_key), *NO_UNKNOWN_QUERY]

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key", "content": {PROBLEM_JSON: {}}},
    422: {"description": "Invalid request", "content": {PROBLEM_JSON: {}}},
    503: {
        "description": "The database is unavailable; retry after Retry-After seconds",
        "content": {PROBLEM_JSON: {}},
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def probes_router(
    registry: CollectorRegistry, ready: ReadyCheck, *, open_probes: bool
) -> APIRouter:
    """/healthz (alive), /readyz (dependencies reachable) and /metrics."""
    deps = [] if open_probes else [Depends(require_key)]
    router = APIRouter(dependencies=deps, tags=["operations"])

    @router.get("/healthz", summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: dependencies are reachable",
        responses={503: {"description": "A dependency is unreachable"}},
    )
    async def readyz() -> Response:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    return router
