"""The CLI's HTTP client against a real local HTTP server: retries, limits, 422 mapping."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cli.api_client import (
    ApiClient,
    ApiError,
    BatchRejected,
    Endpoints,
    reference_now,
    split_batches,
)
from cli.importer import Row, send_rows
from cli.simulate import send_events
from shared.contracts import CustomerLoggedIn


class Script:
    """Answers to hand out in order (status, headers, body), and the bodies received."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.received: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.received.append(body)
            status, headers, answer = script.answers.pop(0)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def client_for(url: str, waits: list[float], retry_for: float = 30) -> ApiClient:
    return ApiClient(Endpoints(url, url, url, "k"), retry_for=retry_for, sleep=waits.append)


def accepted(ids: list[str]) -> tuple[int, dict[str, str], dict[str, Any]]:
    return 202, {}, {"accepted": len(ids), "event_ids": ids}


def test_a_503_is_retried_after_the_servers_retry_after(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "3"}, {"detail": "broker down"}), accepted(["e1"])]
    waits: list[float] = []
    with client_for(url, waits) as client:
        assert client.send_batch([{"event_id": "e1"}]) == ["e1"]
    assert waits == [3.0]
    assert len(script.received) == 2


def test_unavailable_for_too_long_is_an_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "1"}, {"detail": "down"})]
    with client_for(url, [], retry_for=0) as client, pytest.raises(ApiError, match="unavailable"):
        client.send_batch([{"event_id": "e1"}])


def test_a_422_is_raised_with_its_errors(server: tuple[str, Script]) -> None:
    url, script = server
    errors = [{"index": 1, "field": "events[1].amount", "reason": "bad"}]
    script.answers = [(422, {}, {"detail": "1 error", "errors": errors})]
    with client_for(url, []) as client, pytest.raises(BatchRejected) as caught:
        client.send_batch([{"event_id": "e1"}, {"event_id": "e2"}])
    assert caught.value.errors == errors


def login_row(line: int) -> Row:
    event = CustomerLoggedIn(
        event_id=f"e{line}", customer_id="c", occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        channel="web",
    )  # fmt: skip
    return Row(line, [], event=event)


def test_rows_ingest_refuses_get_its_reason_and_the_rest_is_resent(
    server: tuple[str, Script],
) -> None:
    url, script = server
    bad = {"index": 1, "field": "events[1].occurred_at", "reason": "in the future"}
    script.answers = [(422, {}, {"detail": "1 error", "errors": [bad]}), accepted(["e2", "e5"])]
    rows = [login_row(2), login_row(4), login_row(5)]
    with client_for(url, []) as client:
        assert send_rows(client, rows) == 2
    assert rows[1].event is None and rows[1].reason == "ingest: occurred_at: in the future"
    assert [e["event_id"] for e in script.received[1]["events"]] == ["e2", "e5"]


def test_batches_respect_count_and_byte_limits() -> None:
    events = [{"event_id": f"e{i}", "pad": "x" * 90} for i in range(25)]
    by_count = list(split_batches(events, max_events=10))
    assert [len(b) for b in by_count] == [10, 10, 5]
    by_bytes = list(split_batches(events, max_events=1000, max_bytes=1000))
    assert all(len(json.dumps({"events": b})) <= 1000 for b in by_bytes)
    assert [e for b in by_bytes for e in b] == events


def test_endpoints_and_now_come_from_the_environment() -> None:
    env = {"TIERSTREAM_SCORER_URL": "http://s:1/", "TIERSTREAM_API_KEY": "k"}
    endpoints = Endpoints.from_env(env)
    assert endpoints.url("scorer") == "http://s:1"
    assert endpoints.url("ingest") == "http://127.0.0.1:8080"
    assert endpoints.api_key == "k"
    fixed = reference_now({"TIERSTREAM_NOW": "2026-01-01T00:00:00Z"})
    assert fixed == datetime(2026, 1, 1, tzinfo=UTC)


def test_sending_at_a_rate_spreads_batches_over_time(server: tuple[str, Script]) -> None:
    url, script = server
    events = [{"event_id": f"e{i}"} for i in range(150)]
    script.answers = [accepted([f"e{i}" for i in range(n, n + 50)]) for n in (0, 50, 100)]
    started = time.monotonic()
    with client_for(url, []) as client:
        assert send_events(client, events, batch_size=500, rate=500) == 150
    assert time.monotonic() - started >= 0.29  # 150 events at 500/s
    assert [len(body["events"]) for body in script.received] == [150 // 3] * 3
