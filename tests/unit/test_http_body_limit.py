"""The scorer's and actions' APIs refuse a large body before reading it: FastAPI reads a
JSON body before the key check, so anyone could make the service hold any amount of memory
(a 400 MB body grew actions by 1.2 GB; a declared 1 GB one held a request open)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from services.actions.app import create_app as actions_app
from services.actions.settings import ActionsSettings
from services.scorer.app import create_app as scorer_app
from services.scorer.settings import ScorerSettings
from shared.http import API_BODY_MAX_BYTES
from shared.pg import Pool

ENV = {"DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres"}
UNUSED_POOL: Any = object()  # the body is refused before any route could use it


def _actions() -> FastAPI:
    return actions_app(ActionsSettings.model_validate({**ENV, "ACTIONS_API_KEYS": "k"}),
                       pool=UNUSED_POOL)  # fmt: skip


def _scorer() -> FastAPI:
    pool: Pool = UNUSED_POOL
    return scorer_app(ScorerSettings.model_validate({**ENV, "SCORER_API_KEYS": "k"}), pool=pool)


APPS: dict[str, tuple[Callable[[], FastAPI], str, str]] = {
    "actions requeue": (_actions, "POST", "/v1/deliveries/requeue"),
    "actions task": (_actions, "PATCH", "/v1/tasks/1"),
    "scorer": (_scorer, "POST", "/v1/customers"),
}


async def _call(app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]],
                chunks: list[bytes]) -> tuple[int, dict[str, Any]]:  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": True}
        await asyncio.sleep(3600)  # a client that never sends the rest
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers], "root_path": "",
        "server": ("test", 80), "client": ("client", 1),
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)  # type: ignore[arg-type]
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert dict(start["headers"])[b"content-type"] == b"application/problem+json"
    return start["status"], json.loads(body)


@pytest.mark.parametrize(("make", "method", "path"), APPS.values(), ids=APPS.keys())
async def test_a_declared_length_over_the_limit_is_refused_without_reading(
    make: Callable[[], FastAPI], method: str, path: str
) -> None:
    status, body = await _call(make(), method, path, [(b"content-length", b"1000000000")], [])
    assert status == 413
    assert body["detail"] == f"The body must not exceed {API_BODY_MAX_BYTES} bytes."


READING = {name: app for name, app in APPS.items() if name.startswith("actions")}  # the scorer
# has no route that reads a body


@pytest.mark.parametrize(("make", "method", "path"), READING.values(), ids=READING.keys())
async def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(
    make: Callable[[], FastAPI], method: str, path: str
) -> None:
    chunk = b" " * (API_BODY_MAX_BYTES // 2)
    chunks = [b"{", chunk, chunk, chunk]  # then the client would go on forever
    status, body = await _call(make(), method, path, [(b"transfer-encoding", b"chunked")], chunks)
    assert (status, body["title"]) == (413, "Request body too large")
    assert body["detail"] == f"The body must not exceed {API_BODY_MAX_BYTES} bytes."
