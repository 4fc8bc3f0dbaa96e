"""Hostile HTTP input (issue 7, scenario 7): size limits while streaming, deep JSON, odd text."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_helpers import (
    API_KEY,
    AUTH,
    header,
    live_server,
    login,
    read_records,
    topics_of,
    with_event_id,
)

JSON = {**AUTH, "content-type": "application/json"}
LIMIT = 1024 * 1024
CHUNK = 64 * 1024


async def test_a_declared_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"events": [' + b" " * LIMIT + b"]}"
    response = await client.post("/v1/events/batch", content=body, headers=JSON)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_body_of_exactly_the_limit_is_read(client: httpx.AsyncClient) -> None:
    event = json.dumps(login()).encode()
    body = event[:-1] + b" " * (LIMIT - len(event)) + b"}"
    assert len(body) == LIMIT
    response = await client.post("/v1/events", content=body, headers=JSON)
    assert response.status_code == 202, response.text


async def test_a_streamed_body_without_length_is_cut_off_once_past_the_limit(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def ten_mebibytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(160):
            sent += 1
            yield b" " * CHUNK

    response = await client.post("/v1/events", content=ten_mebibytes(), headers=JSON)
    assert response.status_code == 413
    assert sent <= LIMIT // CHUNK + 2, f"the app read {sent} chunks past the limit"


async def call_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: int) -> list[Any]:
    """Drive the ASGI app directly: the only way to send a body its Content-Length contradicts."""
    received = 0
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": received < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("ingest", 80),
    }
    await app(scope, receive, send)
    assert received <= LIMIT // CHUNK + 2, f"the app read {received} chunks"
    return sent


async def test_a_content_length_that_lies_does_not_raise_the_limit(
    settings: IngestSettings, publisher: KafkaPublisher
) -> None:
    app = create_app(settings, publisher=publisher)
    headers = [
        (b"content-length", b"10"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {API_KEY}".encode()),
    ]
    sent = await call_asgi(app, headers, chunks=64)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


def test_over_a_real_socket_413_arrives_before_the_upload_ends(settings: IngestSettings) -> None:
    with live_server(create_app(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {API_KEY}\r\n".encode()
                + b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(LIMIT // CHUNK + 1):  # past the limit, and never the final chunk
                conn.sendall(f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n")
            answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps(login()).encode()[:-1]
        + b', "attributes": {"a": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}}",
        b"{" + b'"a":{' * 50_000 + b"}" * 50_001,
    ],
    ids=["deep-batch", "deep-attribute", "deep-objects"],
)
async def test_deeply_nested_json_is_400_not_a_crash(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/v1/events/batch", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert "recursion" in response.json()["detail"]


async def test_moderately_nested_attributes_are_422(client: httpx.AsyncClient) -> None:
    nested: Any = "leaf"
    for _ in range(100):
        nested = [nested]
    response = await client.post("/v1/events", json=login(attributes={"a": nested}), headers=AUTH)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "text",
    [
        "\u202etxet-lttr",  # right-to-left override
        "e\u0301\u0301\u0301",  # stacked combining accents
        "zero\u200bwidth\u200djoin\ufeff",
        "\U0001f600\U0001f469\u200d\U0001f4bb",  # emoji and a ZWJ sequence
        "bell\x07unit\x1f",  # control characters other than NUL
        "line\u2028sep\u2029para",
        "顧客-очень-عميل",
        "\U0001f600" * 128,  # 128 code points (512 bytes): the longest id allowed
    ],
    ids=["rtl", "combining", "zero-width", "emoji", "control", "separators", "scripts", "max"],
)
async def test_unicode_oddities_in_ids_are_accepted_and_published_verbatim(
    client: httpx.AsyncClient, settings: IngestSettings, text: str
) -> None:
    event = login(event_id=text, customer_id=text, device=text[:256])
    response = await client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["event_ids"] == [text]
    [record] = await read_records(settings, topics_of(settings).logins, until=with_event_id(text))
    assert record.key == text.encode() and header(record, "ce_id") == text
    assert json.loads(record.value)["customer_id"] == text


async def test_an_id_of_129_code_points_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events", json=login(event_id="\U0001f600" * 129), headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "event_id"


@pytest.mark.parametrize(
    "text",
    [
        "1' OR '1'='1",
        "'; DROP TABLE inbox; --",
        "Robert'); DROP TABLE customer;--",
        "1; SELECT pg_sleep(10)",
        '"); DELETE FROM tier_change WHERE ("1"="1',
        "$1::text",
    ],
)
async def test_sql_looking_ids_are_accepted_verbatim(
    client: httpx.AsyncClient, settings: IngestSettings, text: str
) -> None:
    event = login(event_id=text, customer_id=text, source=text)
    response = await client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 202, response.text
    [record] = await read_records(settings, topics_of(settings).logins, until=with_event_id(text))
    published = json.loads(record.value)
    assert (published["event_id"], published["customer_id"], published["source"]) == (text,) * 3
    assert unquote(header(record, "ce_source")) == text  # percent-encoded: a URI-reference


@pytest.mark.parametrize(
    "raw",
    [b'{"amount": NaN}', b'{"amount": Infinity}', b'{"amount": -Infinity}', b"1" * 5000],
    ids=["nan", "infinity", "minus-infinity", "5000-digit-int"],
)
async def test_non_json_numbers_are_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/v1/events", content=raw, headers=JSON)
    assert response.status_code == 400, response.text


async def test_out_of_range_numbers_are_422(client: httpx.AsyncClient) -> None:
    event = login(attributes={"huge": 1e308})
    body = json.dumps(event).replace("1e+308", "1e999")
    response = await client.post("/v1/events", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"].startswith("attributes.huge")
