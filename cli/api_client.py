"""A small HTTP client for the three services, configured from TIERSTREAM_* variables."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from cli.settings import Service, default_url, url_variable, variable

SERVICES: tuple[Service, ...] = ("ingest", "scorer", "actions")
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 1024 * 1024
_ENVELOPE_BYTES = 64  # '{"events": [...]}' and some slack
_JSON = {"Content-Type": "application/json"}
_INDEX_IN_FIELD = re.compile(r"^events\[(\d+)\]\.?")
API_KEY_VARIABLE = variable("api_key")


class ConfigError(ValueError):
    """A TIERSTREAM_* variable the CLI cannot use; the message names it, never its value."""


def _checked_key(raw: str) -> str:
    """The key without surrounding whitespace (a newline from `$(cat key)` or a file); an HTTP
    header can carry nothing but printable ASCII, so anything else is refused before a
    request fails on it in a way that looks like a network error."""
    key = raw.strip()
    if key and not all("!" <= char <= "~" for char in key):
        raise ConfigError(
            f"{API_KEY_VARIABLE}: the key holds a character other than printable ASCII"
            " (a space, an accented letter, a control character); set it to the key alone"
        )
    return key


def _checked_url(variable: str, url: str) -> str:
    """`url` when it is http(s)://host[:port] with a port 1-65535: found at the first request,
    a bad one came after `simulate` had built its population, or after 60 s of retries."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"{variable}={url!r} is not a URL like http://host:port (port 1-65535)")
    return url


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the services and the API key the CLI sends."""

    ingest: str
    scorer: str
    actions: str
    api_key: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Endpoints:
        """TIERSTREAM_{INGEST,SCORER,ACTIONS}_URL (default local ports) and TIERSTREAM_API_KEY;
        `ConfigError` for a key no HTTP header can carry."""
        env = os.environ if env is None else env
        urls = {
            s: _checked_url(url_variable(s), env.get(url_variable(s), default_url(s)))
            for s in SERVICES
        }
        key = _checked_key(env.get(API_KEY_VARIABLE, ""))
        return cls(urls["ingest"], urls["scorer"], urls["actions"], key)

    def url(self, service: Service) -> str:
        """The base URL of one service, without a trailing slash."""
        base: str = getattr(self, service)
        return base.rstrip("/")


class ApiError(Exception):
    """A service answered with an error (or could not be reached in time).

    `lasting` errors come back unchanged until the user fixes something (a refused key, a
    URL without http://, any 4xx but 408 and 429); the others may pass on a later try.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        body: Mapping[str, Any] | None = None,
        *,
        lasting: bool | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status, self.detail, self.body = status, detail, dict(body or {})
        if lasting is None:
            lasting = 400 <= status < 500 and status not in (408, 429)
        self.lasting = lasting


class BatchRejected(ApiError):
    """Ingest refused a batch (422 invalid, 413 too large): `errors` lists each bad item's
    index (when the problem is one item's), field and reason."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The problem document's per-item errors."""
        found = self.body.get("errors")
        return list(found) if isinstance(found, list) else []

    def located(self) -> list[tuple[int | None, str]]:
        """Each error as the index of the event it names (None: the request as a whole) and
        `field: reason`, the field inside that event."""
        found: list[tuple[int | None, str]] = []
        for err in self.errors:
            index, where = err.get("index"), str(err.get("field", ""))
            if match := _INDEX_IN_FIELD.match(where):
                index = int(match.group(1)) if index is None else index
                where = where[match.end() :]
            reason = f"{where}: {err.get('reason', 'invalid')}".lstrip(": ")
            found.append((index if isinstance(index, int) else None, reason))
        return found

    def event_errors(self, size: int) -> dict[int, list[str]]:
        """{index: reasons} of the errors naming one of the `size` events sent; none: the
        refusal is about the request as a whole (its event count or body size)."""
        found: dict[int, list[str]] = {}
        for index, reason in self.located():
            if index is not None and 0 <= index < size:
                found.setdefault(index, []).append(reason)
        return found

    def reasons(self, limit: int | None = 3, *, in_event: bool = False) -> str:
        """Its errors as `field: reason` on one line, the first `limit` and how many more
        (`in_event`: fields inside the event, for a one-event request); when it lists none,
        its title and detail."""
        if in_event:
            texts = [reason for _, reason in self.located()]
        else:
            texts = [
                f"{err.get('field', '')}: {err.get('reason', 'invalid')}".lstrip(": ")
                for err in self.errors
            ]
        if not texts:
            return f"{self.body.get('title') or f'HTTP {self.status}'}: {self.detail}"
        shown = texts if limit is None else texts[:limit]
        more = len(texts) - len(shown)
        return "; ".join(shown) + (f"; and {more} more" if more else "")


def split_batches(
    events: Sequence[Mapping[str, Any]],
    *,
    max_events: int = MAX_BATCH_EVENTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[list[Mapping[str, Any]]]:
    """Consecutive chunks within ingest's count and body-size limits."""
    chunk: list[Mapping[str, Any]] = []
    size = _ENVELOPE_BYTES
    for event in events:
        length = len(json.dumps(event, default=str)) + 2
        if chunk and (len(chunk) >= max_events or size + length > max_bytes):
            yield chunk
            chunk, size = [], _ENVELOPE_BYTES
        chunk.append(event)
        size += length
    if chunk:
        yield chunk


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:200]}
    return body if isinstance(body, dict) else {"detail": str(body)[:200]}


def _document(service: Service, url: str, response: httpx.Response) -> dict[str, Any]:
    """A 2xx answer's JSON object; ApiError when it is not one (a proxy's or a login page's
    HTML at the configured URL): read as data, it made an all-zero report."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = response.headers.get("content-type", "no content type")
        raise ApiError(
            response.status_code,
            f"{service} at {url} answered {response.status_code} with {kind}, not Tierstream's"
            f" JSON: is {url_variable(service)} the {service} service?",
        )
    return body


def _retry_after(response: httpx.Response | httpx.TransportError, attempt: int) -> float:
    """Seconds to wait: the server's Retry-After when given, else a capped back-off."""
    header = response.headers.get("Retry-After") if isinstance(response, httpx.Response) else None
    if header is not None:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    return float(min(5.0, 0.25 * 2**attempt))


def _detail(response: httpx.Response, body: Mapping[str, Any], *, key_sent: bool) -> str:
    """The problem's detail; for 401/403, that the key was refused, or that none is set
    (`key_sent` False), and which variable sets it."""
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
    if response.status_code not in (401, 403):
        return detail
    if not key_sent:  # nothing was refused: there was no key to send
        return (
            f"{API_KEY_VARIABLE} is not set and the service requires a key ({detail}); set it"
            f" to one of the services' TIERSTREAM_API_KEYS: export {API_KEY_VARIABLE}=<key>"
        )
    return f"the API key was refused ({detail}); set {API_KEY_VARIABLE} to a key it accepts"


def _bad_url(service: Service, base: str, exc: Exception) -> ApiError:
    """A URL no retry can reach: say which variable holds it, and what it must look like."""
    return ApiError(
        0,
        f"{url_variable(service)}={base!r} is not usable ({exc}); write it as http://host:port",
        lasting=True,
    )


def _refused(exc: BaseException) -> bool:
    """Whether a connection error is a refusal: nothing listens at the address (httpx wraps
    the OS's ConnectionRefusedError twice)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _connection_error(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unreachable(service: Service, url: str, exc: httpx.TransportError) -> ApiError:
    """No answer from a service: a refused connection means nothing listens at the address
    (not that the service refused anything: "ingest refused the events" misled)."""
    if not isinstance(exc, httpx.ConnectError):  # connected, then no answer (a timeout)
        return ApiError(0, f"no answer from {service} at {url}: {_connection_error(exc)}")
    why = (
        "nothing is listening there (connection refused)"
        if _refused(exc)
        else _connection_error(exc)
    )
    return ApiError(
        0,
        f"could not reach {service} at {url}: {why}; is {service} running, and"
        f" {url_variable(service)} its address?",
    )


def _unavailable(
    url: str, retry_for: float, last: httpx.Response | httpx.TransportError
) -> ApiError:
    """Still no acceptance at the deadline: the last answer (a 503), or the last connection
    error (ingest answered before: it may be restarting)."""
    if isinstance(last, httpx.Response):
        why = f"HTTP {last.status_code}: {_detail(last, _problem(last), key_sent=True)}"
        return ApiError(
            last.status_code, f"ingest unavailable at {url} for {retry_for:.0f}s (last: {why})"
        )
    gone = ": nothing is listening there any more" if _refused(last) else ""
    return ApiError(
        0,
        f"could not reach ingest at {url} for {retry_for:.0f}s{gone}"
        f" (last: {_connection_error(last)})",
    )


class ApiClient:
    """Synchronous calls to ingest, scorer and actions with the configured key."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        timeout: float = 15.0,
        retry_for: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        headers = {"Authorization": f"Bearer {endpoints.api_key}"} if endpoints.api_key else {}
        self.endpoints = endpoints
        self.retry_for = retry_for  # how long a send keeps retrying 503s / connection errors
        self._ingest_answered = False  # until then, a refused connection is not retried
        self._sleep, self._clock = sleep, clock
        self._http = httpx.Client(headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def send_batch(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """POST one batch; retries 503 (honouring Retry-After) and connection errors, the
        latter only once ingest has answered (it may be restarting): before, nothing ever
        answered at the address, and 60 s of retries ended in the same error.

        Returns the accepted event ids; raises `BatchRejected` on 422 and 413, `ApiError`
        otherwise (a URL without http:// at once, without retrying).
        """
        url = f"{self.endpoints.url('ingest')}/v1/events/batch"
        content = json.dumps({"events": list(events)}, default=str).encode()
        deadline = self._clock() + self.retry_for
        attempt = 0
        while True:
            response = self._post_once(url, content)
            if isinstance(response, httpx.Response):
                self._ingest_answered = True
                if response.status_code != 503:
                    return self._accepted(response)
            elif not self._ingest_answered and isinstance(response, httpx.ConnectError):
                raise _unreachable("ingest", self.endpoints.url("ingest"), response)
            left = deadline - self._clock()
            if left <= 0:
                raise _unavailable(url, self.retry_for, response)
            self._sleep(min(_retry_after(response, attempt), left))  # never past the deadline
            attempt += 1

    def _post_once(self, url: str, content: bytes) -> httpx.Response | httpx.TransportError:
        """The answer, or why none came (a connection error: maybe worth retrying)."""
        try:
            return self._http.post(url, content=content, headers=_JSON)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _bad_url("ingest", self.endpoints.url("ingest"), exc) from exc
        except httpx.TransportError as exc:
            return exc

    def _accepted(self, response: httpx.Response) -> list[str]:
        body = _problem(response)
        ids = body.get("event_ids")
        if response.status_code == 202 and isinstance(ids, list):
            return [str(i) for i in ids]
        if response.status_code < 400:  # no ingest answers so: something else is at the URL
            kind = response.headers.get("content-type", "no content type")
            raise ApiError(
                response.status_code,
                f"ingest at {self.endpoints.url('ingest')} answered {response.status_code} with"
                f" {kind}, not Tierstream's JSON: is {url_variable('ingest')} the ingest service?",
                lasting=True,  # taken as accepted (202) or as a stop worth retrying (200)
            )
        detail = _detail(response, body, key_sent=bool(self.endpoints.api_key))
        if response.status_code in (413, 422):
            raise BatchRejected(response.status_code, detail, body)
        raise ApiError(response.status_code, detail, body)

    def get(
        self, service: Service, path: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """GET a JSON document; `ApiError` on a non-2xx answer or when unreachable."""
        url = f"{self.endpoints.url(service)}{path}"
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.get(url, params=clean)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _bad_url(service, self.endpoints.url(service), exc) from exc
        except httpx.TransportError as exc:
            raise _unreachable(service, self.endpoints.url(service), exc) from exc
        body = _problem(response)
        if response.status_code >= 300:
            detail = _detail(response, body, key_sent=bool(self.endpoints.api_key))
            raise ApiError(response.status_code, detail, body)
        return _document(service, url, response)

    def get_or_none(self, service: Service, path: str) -> dict[str, Any] | None:
        """GET a JSON document, None on 404."""
        try:
            return self.get(service, path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def paginate(
        self, service: Service, path: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a `{"items": [...], "next_cursor": ...}` listing."""
        query = dict(params or {})
        while True:
            page = self.get(service, path, query)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor


def reference_now(env: Mapping[str, str] | None = None) -> datetime:
    """TIERSTREAM_NOW (the system's fixed 'now' for demos and tests) or the wall clock."""
    raw = (os.environ if env is None else env).get("TIERSTREAM_NOW")
    if not raw:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise ConfigError(
            f"TIERSTREAM_NOW={raw!r} is not an ISO 8601 time with a timezone,"
            " e.g. 2026-01-01T00:00:00Z"
        )
    return at
