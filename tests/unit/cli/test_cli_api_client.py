"""The CLI's HTTP client against a real local HTTP server: retries, limits, 422 mapping."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from cli import simulate
from cli.api_client import (
    MAX_BATCH_BYTES,
    ApiClient,
    ApiError,
    BatchRejected,
    ConfigError,
    Endpoints,
    reference_now,
    split_batches,
)
from cli.batches import RequestSize
from cli.importer import Row, send_rows
from cli.simulate import send_events
from shared.contracts import CustomerLoggedIn
from shared.embedded import free_port
from tests.support.json_server import json_server


class Script:
    """Answers to hand out in order (status, headers, body), and the bodies received."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.received: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        script.received.append(body)
        return script.answers.pop(0)

    with json_server(answer) as url:
        yield url, script


def client_for(url: str, waits: list[float], retry_for: float = 30) -> ApiClient:
    return ApiClient(Endpoints(url, url, url, "k"), retry_for=retry_for, sleep=waits.append)


def accepted(ids: list[str]) -> tuple[int, dict[str, str], dict[str, Any]]:
    return 202, {}, {"accepted": len(ids), "event_ids": ids}


def problem(
    status: int, title: str, detail: str, *errors: dict[str, Any]
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body: dict[str, Any] = {"title": title, "detail": detail}
    return status, {}, {**body, "errors": list(errors)} if errors else body


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


def test_a_key_is_sent_without_surrounding_whitespace() -> None:
    assert Endpoints.from_env({"TIERSTREAM_API_KEY": " k-0123456789\n"}).api_key == "k-0123456789"
    assert Endpoints.from_env({"TIERSTREAM_API_KEY": "\n"}).api_key == ""  # as if unset


@pytest.mark.parametrize("key", ["clé-0123456789", "k 0123456789", "k-01234\x0056789", "k\tk"])
def test_a_key_no_header_can_carry_is_refused_naming_the_variable_not_the_key(key: str) -> None:
    with pytest.raises(ValueError, match=r"^TIERSTREAM_API_KEY: .*printable ASCII") as refused:
        Endpoints.from_env({"TIERSTREAM_API_KEY": key})
    assert key.strip() not in str(refused.value)


@pytest.mark.parametrize("raw", ["yesterday", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z"])
def test_a_bad_fixed_now_is_refused_naming_the_variable(raw: str) -> None:
    # A ConfigError: the commands exit 2 for it, as for any bad setting (report said 1).
    with pytest.raises(ConfigError, match=f"TIERSTREAM_NOW={raw!r} is not an ISO 8601 time"):
        reference_now({"TIERSTREAM_NOW": raw})


class FakeClock:
    """A monotonic clock that moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_sending_at_a_rate_spreads_batches_over_time(
    server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = server
    events = [{"event_id": f"e{i}"} for i in range(150)]
    script.answers = [accepted([f"e{i}" for i in range(n, n + 50)]) for n in (0, 50, 100)]
    clock = FakeClock()  # the pacing's clock and sleep: its waits are recorded, not slept
    monkeypatch.setattr(simulate, "time", SimpleNamespace(monotonic=clock, sleep=clock.sleep))
    with client_for(url, []) as client:
        assert send_events(client, events, batch_size=500, rate=500) == 150
    # 150 events at 500/s: batches of 50 (a tenth of a second's worth), each followed by the
    # wait that keeps the total at the rate, 0.3 s in all.
    assert [len(body["events"]) for body in script.received] == [150 // 3] * 3
    assert clock.waits == pytest.approx([0.1, 0.1, 0.1])


def test_a_long_retry_after_never_sleeps_past_the_retry_deadline(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "150"}, {"detail": "broker down"})] * 2
    clock = FakeClock()
    endpoints = Endpoints(url, url, url, "k")
    with (
        ApiClient(endpoints, retry_for=60, sleep=clock.sleep, clock=clock) as client,
        pytest.raises(ApiError, match=r"unavailable .* for 60s \(last: HTTP 503: broker down\)"),
    ):
        client.send_batch([{"event_id": "e1"}])
    assert clock.waits == [60.0]


def test_an_address_nothing_listens_at_fails_at_once_saying_so() -> None:
    # `simulate` showed "sending 0/3" for 60 s, then "ingest refused the events: ingest
    # unavailable at ...": nothing had ever answered there, and nothing had refused anything.
    url = f"http://127.0.0.1:{free_port()}"
    clock = FakeClock()
    with (
        ApiClient(Endpoints(url, url, url, "k"), retry_for=60, sleep=clock.sleep,
                  clock=clock) as client,
        pytest.raises(ApiError) as caught,
    ):  # fmt: skip
        client.send_batch([{"event_id": "e1"}])
    assert clock.waits == []
    assert str(caught.value) == (
        f"could not reach ingest at {url}: nothing is listening there (connection refused);"
        " is ingest running, and TIERSTREAM_INGEST_URL its address?"
    )
    assert not caught.value.lasting  # `import` stops with 1: run again once ingest is up


def test_an_ingest_that_answered_before_is_waited_for_while_it_restarts() -> None:
    # Once ingest has answered, a refused connection is a restart (its supervisor's, or a
    # deploy's): the send waits for it, as before.
    answers = [accepted(["e1"]), accepted(["e2"])]

    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        return answers.pop(0)

    clock = FakeClock()
    with ExitStack() as restarted:

        def sleep_then_restart(seconds: float) -> None:
            clock.sleep(seconds)
            if len(clock.waits) == 3:  # back after three refused tries, on the same port
                restarted.enter_context(json_server(answer, port=port))

        with json_server(answer) as url:
            port = int(url.rpartition(":")[2])
            endpoints = Endpoints(url, url, url, "k")
            client = ApiClient(endpoints, retry_for=60, sleep=sleep_then_restart, clock=clock)
            assert client.send_batch([{"event_id": "e1"}]) == ["e1"]
        with client:  # ingest stopped: its port refuses connections until the restart
            assert client.send_batch([{"event_id": "e2"}]) == ["e2"]
    assert len(clock.waits) == 3


def test_an_ingest_gone_for_good_after_answering_is_told_after_the_retries(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [accepted(["e1"])]
    clock = FakeClock()
    with socket.socket() as holder:  # a port nothing listens on, for the second address
        holder.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{holder.getsockname()[1]}"
    client = ApiClient(Endpoints(url, url, url, "k"), retry_for=60, sleep=clock.sleep, clock=clock)
    with client:
        assert client.send_batch([{"event_id": "e1"}]) == ["e1"]
        client.endpoints = Endpoints(gone, gone, gone, "k")  # as if ingest had stopped
        with pytest.raises(ApiError) as caught:
            client.send_batch([{"event_id": "e2"}])
    assert sum(clock.waits) == 60
    assert str(caught.value).startswith(
        f"could not reach ingest at {gone}/v1/events/batch for 60s: nothing is listening there"
        " any more (last: ConnectError: "
    )


def test_a_report_against_nothing_says_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with client_for(url, []) as client, pytest.raises(ApiError) as caught:
        client.get("scorer", "/v1/stats/tiers")
    assert str(caught.value) == (
        f"could not reach scorer at {url}: nothing is listening there (connection refused);"
        " is scorer running, and TIERSTREAM_SCORER_URL its address?"
    )


@pytest.mark.parametrize("url", ["127.0.0.1:18480", "localhost:8080", "ftp://127.0.0.1:1"])
def test_a_url_without_http_fails_at_once_naming_its_variable(url: str) -> None:
    clock = FakeClock()
    endpoints = Endpoints(url, url, url, "k")
    with ApiClient(endpoints, retry_for=60, sleep=clock.sleep, clock=clock) as client:
        with pytest.raises(ApiError, match=r"TIERSTREAM_INGEST_URL=.*http://host:port") as sent:
            client.send_batch([{"event_id": "e1"}])
        with pytest.raises(ApiError, match=r"TIERSTREAM_SCORER_URL=.*http://host:port") as read:
            client.get("scorer", "/v1/stats/tiers")
    assert clock.waits == []
    assert sent.value.lasting and read.value.lasting


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_says_so_and_is_not_worth_retrying(
    server: tuple[str, Script], status: int
) -> None:
    url, script = server
    script.answers = [(status, {}, {"title": "Unauthorized", "detail": "Send a valid API key"})]
    with client_for(url, []) as client, pytest.raises(ApiError) as caught:
        client.send_batch([{"event_id": "e1"}])
    assert "API key was refused" in str(caught.value)
    assert "TIERSTREAM_API_KEY" in str(caught.value)
    assert caught.value.lasting


@pytest.mark.parametrize("call", ["send", "get"], ids=["import", "report"])
def test_without_a_key_the_answer_says_the_key_is_not_set_not_refused(
    server: tuple[str, Script], call: str
) -> None:
    url, script = server
    script.answers = [(401, {}, {"title": "Unauthorized", "detail": "Send a valid API key"})]
    client = ApiClient(Endpoints(url, url, url, ""), retry_for=0)
    with client, pytest.raises(ApiError) as caught:
        if call == "send":
            client.send_batch([{"event_id": "e1"}])
        else:
            client.get("scorer", "/v1/stats/tiers")
    assert "TIERSTREAM_API_KEY is not set" in str(caught.value)
    assert "export TIERSTREAM_API_KEY=" in str(caught.value)
    assert "refused" not in str(caught.value)
    assert caught.value.lasting


def test_only_unavailability_is_worth_retrying() -> None:
    assert not ApiError(0, "unreachable").lasting
    assert not ApiError(503, "down").lasting
    assert not ApiError(500, "boom").lasting
    assert not ApiError(429, "slow down").lasting
    assert ApiError(404, "not found").lasting


def test_a_batch_level_refusal_splits_the_batch_in_halves(server: tuple[str, Script]) -> None:
    url, script = server
    too_many = {"field": "events", "reason": "List should have at most 2 items after validation"}
    script.answers = [
        problem(422, "Invalid events", "1 validation error(s)", too_many),
        accepted(["e2", "e4"]),
        accepted(["e5", "e7"]),
    ]
    rows = [login_row(2), login_row(4), login_row(5), login_row(7)]
    with client_for(url, []) as client:
        assert send_rows(client, rows) == 4
    assert [len(body["events"]) for body in script.received] == [4, 2, 2]
    assert all(r.event is not None for r in rows)


def test_the_request_size_learned_by_halving_carries_over_to_the_next_chunks(
    server: tuple[str, Script],
) -> None:
    url, script = server
    too_many = {"field": "events", "reason": "List should have at most 2 items after validation"}
    script.answers = [
        problem(422, "Invalid events", "1 validation error(s)", too_many),
        accepted(["e2", "e4"]), accepted(["e5", "e7"]),
        accepted(["e8", "e9"]), accepted(["e10", "e11"]),
    ]  # fmt: skip
    size = RequestSize()
    with client_for(url, []) as client:
        assert send_rows(client, [login_row(n) for n in (2, 4, 5, 7)], size) == 4
        assert send_rows(client, [login_row(n) for n in (8, 9, 10, 11)], size) == 4
    # The second chunk goes out in pairs at once, without a refused request first.
    assert [len(body["events"]) for body in script.received] == [4, 2, 2, 2, 2]
    assert size.max_events == 2


def test_a_single_row_refused_for_the_whole_request_gets_ingests_reasons(
    server: tuple[str, Script],
) -> None:
    url, script = server
    error = {"field": "events", "reason": "List should have at most 0 items after validation"}
    script.answers = [
        problem(422, "Invalid events", "1 validation error(s)", error),
        problem(413, "Request body too large", "The body must not exceed 1024 bytes."),
    ]
    first, second = login_row(2), login_row(3)
    with client_for(url, []) as client:
        assert send_rows(client, [first]) == 0
        assert send_rows(client, [second]) == 0
    assert first.event is None
    assert first.reason == "ingest: events: List should have at most 0 items after validation"
    assert second.event is None
    assert second.reason == ("ingest: Request body too large: The body must not exceed 1024 bytes.")


def test_an_event_too_large_for_the_broker_is_rejected_and_the_rest_resent(
    server: tuple[str, Script],
) -> None:
    url, script = server
    too_large = {
        "field": "events[1]", "reason": "its Kafka record would take 9000 bytes; the broker"
        " accepts at most 4096", "type": "record_too_large", "index": 1,
    }  # fmt: skip
    script.answers = [
        problem(413, "Event too large", "Event 'e4' is too large", too_large),
        accepted(["e2", "e5"]),
    ]
    rows = [login_row(2), login_row(4), login_row(5)]
    with client_for(url, []) as client:
        assert send_rows(client, rows) == 2
    assert rows[1].event is None
    assert rows[1].reason.startswith("ingest: its Kafka record would take 9000 bytes")
    assert [e["event_id"] for e in script.received[1]["events"]] == ["e2", "e5"]


def test_rows_are_sent_in_requests_under_the_body_limit(server: tuple[str, Script]) -> None:
    url, script = server
    rows = [login_row(line) for line in range(2, 8)]
    for row in rows:
        assert row.event is not None
        row.event = row.event.model_copy(update={"attributes": {"note": "x" * 300_000}})
    script.answers = [accepted(["a"] * 3), accepted(["b"] * 3)]
    with client_for(url, []) as client:
        assert send_rows(client, rows) == 6
    assert [len(body["events"]) for body in script.received] == [3, 3]
    assert all(len(json.dumps(body)) <= MAX_BATCH_BYTES for body in script.received)


def test_simulated_events_refused_as_too_many_are_sent_in_halves_and_the_size_is_kept(
    server: tuple[str, Script],
) -> None:
    url, script = server
    too_many = {"field": "events", "reason": "List should have at most 2 items after validation"}
    events = [{"event_id": f"e{i}"} for i in range(10)]
    script.answers = [
        problem(422, "Invalid events", "1 validation error(s)", too_many),
        *[accepted([f"e{i}", f"e{i + 1}"]) for i in range(0, 10, 2)],
    ]
    with client_for(url, []) as client:
        assert send_events(client, events, batch_size=4) == 10
    # The first 4 refused, then its halves; the next four already at the size that passed.
    assert [len(body["events"]) for body in script.received] == [4, 2, 2, 2, 2, 2]
    assert [e["event_id"] for body in script.received[1:] for e in body["events"]] == [
        e["event_id"] for e in events
    ]


def test_a_simulated_event_ingest_refuses_by_name_stops_the_sending_with_its_reasons(
    server: tuple[str, Script],
) -> None:
    url, script = server
    errors = [
        {"index": i, "field": f"events[{i}].occurred_at", "reason": "in the future"}
        for i in range(2, 6)
    ]
    script.answers = [problem(422, "Invalid events", "4 validation error(s)", *errors)]
    events = [{"event_id": f"e{i}"} for i in range(6)]
    with client_for(url, []) as client, pytest.raises(BatchRejected) as refused:
        send_events(client, events, batch_size=10)
    assert len(script.received) == 1  # not halved: the events themselves are refused
    assert refused.value.reasons() == (
        "events[2].occurred_at: in the future; events[3].occurred_at: in the future;"
        " events[4].occurred_at: in the future; and 1 more"
    )


def test_a_2xx_answer_that_is_not_a_json_object_is_an_error_not_data(
    server: tuple[str, Script],
) -> None:
    # A login page or a proxy at TIERSTREAM_SCORER_URL: `report` printed all zeros, exit 0.
    url, script = server
    script.answers = [(200, {}, ["not", "an", "object"])]  # type: ignore[list-item]
    with pytest.raises(ApiError, match=r"not Tierstream's JSON: is TIERSTREAM_SCORER_URL"):
        client_for(url, []).get("scorer", "/v1/stats/tiers")


@pytest.mark.parametrize(
    "url", ["localhost:8080", "http://127.0.0.1:99999", "http://:80", "ftp://host", "http://h:x"]
)
def test_a_service_url_the_cli_cannot_use_is_refused_before_any_work(url: str) -> None:
    # Found at the first request: after `simulate` built its population, or after 60 s of
    # an import's retries.
    with pytest.raises(ConfigError, match=r"TIERSTREAM_SCORER_URL=.* is not a URL like http://"):
        Endpoints.from_env({"TIERSTREAM_SCORER_URL": url})
    assert Endpoints.from_env({"TIERSTREAM_SCORER_URL": "https://tierstream.example"}).scorer


@pytest.mark.parametrize(
    ("status", "body"), [(202, {"queued": True}), (200, {"hello": "world"})], ids=["202", "200"]
)
def test_an_answer_no_ingest_gives_is_a_lasting_error_not_acceptance(
    server: tuple[str, Script], status: int, body: dict[str, Any]
) -> None:
    # A 202 without event_ids counted every event as accepted; a 200 stopped the import as
    # if a retry could help.
    url, script = server
    script.answers = [(status, {}, body)]
    with pytest.raises(ApiError, match="is TIERSTREAM_INGEST_URL the ingest service") as caught:
        client_for(url, []).send_batch([{"event_id": "e1"}])
    assert caught.value.lasting
