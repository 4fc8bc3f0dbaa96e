"""The read API's contract: auth, 404, filters with cursor pagination, history, stats."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest

from services.scorer.app import create_app
from services.scorer.batch import apply_batch
from services.scorer.db import create_pool
from services.scorer.evaluation import Scoring
from services.scorer.metrics import scorer_metrics
from services.scorer.relay import OutboxRelay
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.contracts import TierChanged
from shared.domain.rules import load_rules
from shared.domain.state import Event
from shared.embedded import EmbeddedKafka
from shared.kafka import CHANGE_SEQ_HEADER, ensure_topics, make_consumer, make_producer
from shared.metrics import new_registry
from shared.readiness import BrokerCheck, readiness
from shared.topics import SCORER_GROUP, Topics
from tests.integration.scorer.support import NOW, login, purchase, read_topic, support
from tests.support.metrics_text import sample_value

AUTH = {"Authorization": "Bearer test-key"}
SLASHED = "acme/eu/42"  # upstream ids may contain slashes


@pytest.fixture
async def api(base_env: dict[str, str], scorer_db: str) -> AsyncIterator[httpx.AsyncClient]:
    """The scorer app over a database holding 5 gold, 3 bronze and one lead customer."""
    events: list[Event] = [
        purchase(f"g{c}-{i}", f"gold-{c}", days_ago=i * 5, amount="600")
        for c in range(5)
        for i in range(10)
    ]
    events += [purchase(f"b{c}", f"bronze-{c}", days_ago=200, amount="50") for c in range(3)]
    events += [login("l1", "gold-0", days_ago=1), support("s1", "gold-0", days_ago=2, nps=9)]
    events += [login("l2", SLASHED, days_ago=1).model_copy(update={"attributes": {"tier": "x"}})]
    async with _serving(base_env, scorer_db, events) as client:
        yield client


@contextlib.asynccontextmanager
async def _serving(
    env: dict[str, str], database_url: str, events: list[Event]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the scorer app over a database holding `events`."""
    settings = ScorerSettings.model_validate(env)
    pool = await create_pool(database_url, size=2, application_name="test")
    scoring = Scoring(load_rules(settings.rules_file))
    await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=scoring, now=NOW)
    app = create_app(settings, pool=pool, clock=FixedClock(NOW))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://scorer"
        ) as client:
            yield client
    finally:
        await pool.close()


async def test_pages_past_customers_with_the_longest_ids(
    base_env: dict[str, str], scorer_db: str
) -> None:
    # 128 four-byte characters: their cursor is 683 characters, and the API refused cursors
    # past 512, so the page after one of them could not be asked for.
    longest = ["\U0001f600" * 127 + last for last in "ab"] + ["\U0001f600" * 128]
    events: list[Event] = [login(f"l{i}", c, days_ago=1) for i, c in enumerate(longest)]
    seen: list[str] = []
    async with _serving(base_env, scorer_db, events) as api:
        cursor: str | None = None
        for _ in range(len(longest) + 1):
            params: dict[str, str | int] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = await api.get("/v1/customers", params=params, headers=AUTH)
            assert page.status_code == 200, page.text
            seen += [item["customer_id"] for item in page.json()["items"]]
            if (cursor := page.json()["next_cursor"]) is None:
                break
    assert sorted(seen) == sorted(longest)


async def _publish_all(env: dict[str, str], database_url: str) -> None:
    """Run the outbox relay once over everything pending (the feed lists what went out)."""
    settings = ScorerSettings.model_validate(env)
    topic = Topics(settings.topic_namespace).tier_changed
    await ensure_topics(settings, [topic])
    pool = await create_pool(database_url, size=1, application_name="relay")
    producer = make_producer(settings)
    await producer.start()
    try:
        await OutboxRelay(pool, producer, topic=topic, batch=1000, clock=FixedClock(NOW),
                          metrics=scorer_metrics(new_registry())).drain()  # fmt: skip
    finally:
        await producer.stop()
        await pool.close()


async def test_a_misspelt_filter_is_422_not_an_unfiltered_list(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/customers", params={"valuetier": "gold"}, headers=AUTH)
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["type"]) == ("query.valuetier", "query_unknown")
    trailing = await api.get("/v1/stats/tiers/", headers=AUTH)  # was a bare 307
    assert trailing.status_code == 404
    assert trailing.headers["content-type"] == "application/problem+json"


async def test_every_route_needs_an_api_key(api: httpx.AsyncClient) -> None:
    for path in (
        "/v1/customers/gold-0",
        "/v1/customers",
        "/v1/customers/gold-0/changes",
        "/v1/stats/tiers",
        "/v1/changes",
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await api.get(path, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"


async def test_requests_are_timed_by_route_template_method_and_status(
    api: httpx.AsyncClient,
) -> None:
    for customer in ("gold-0", "nobody", "gold-1"):
        await api.get(f"/v1/customers/{customer}", headers=AUTH)
    exposition = (await api.get("/metrics", headers=AUTH)).text
    name = "tierstream_scorer_request_duration_seconds_count"
    one = {"route": "/v1/customers/{customer_id}", "method": "GET"}  # as API.md writes it
    assert sample_value(exposition, name, **one, status="200") == 2, exposition
    assert sample_value(exposition, name, **one, status="404") == 1, exposition
    assert "gold-0" not in exposition and "nobody" not in exposition  # templates, never ids


async def test_a_customer_reads_as_of_the_scorers_now_and_unknown_ones_are_404(
    api: httpx.AsyncClient,
) -> None:
    body = (await api.get("/v1/customers/gold-0", headers=AUTH)).json()
    assert body["customer_id"] == "gold-0"
    assert (body["value_tier"], body["activity_level"], body["lifecycle_stage"]) == (
        "gold",
        "active",
        "established",
    )
    assert body["lifetime_orders"] == 10 and body["lifetime_spend"] == 6000.0
    assert body["frequency_365d"] == 10 and body["monetary_365d"] == 6000.0
    assert body["avg_order_value"] == 600.0 and body["recency_days"] == 0.0
    assert (body["r_score"], body["f_score"], body["m_score"]) == (5, 4, 4)
    assert body["logins_30d"] == 1 and body["latest_nps"] == 9 and body["open_tickets"] == 1
    assert body["last_login_at"].startswith("2026-02-28") and body["rules_version"]
    missing = await api.get("/v1/customers/nobody", headers=AUTH)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["status"] == 404


async def test_lists_filter_by_class_and_page_with_a_cursor(api: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, str | int] = {
            "value_tier": "gold",
            "limit": 2,
            **({"cursor": cursor} if cursor else {}),
        }
        page = (await api.get("/v1/customers", params=params, headers=AUTH)).json()
        seen += [item["customer_id"] for item in page["items"]]
        assert all(item["value_tier"] == "gold" for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"gold-{c}" for c in range(5)]
    bronze = (
        await api.get("/v1/customers?value_tier=bronze&lifecycle_stage=at_risk", headers=AUTH)
    ).json()
    assert [i["customer_id"] for i in bronze["items"]] == ["bronze-0", "bronze-1", "bronze-2"]
    assert bronze["next_cursor"] is None
    assert (await api.get("/v1/customers?cursor=%%%", headers=AUTH)).status_code == 422
    assert (await api.get("/v1/customers?limit=0", headers=AUTH)).status_code == 422


async def test_the_change_history_and_the_tier_stats(api: httpx.AsyncClient) -> None:
    first = (await api.get("/v1/customers/gold-0/changes?limit=2", headers=AUTH)).json()
    rest = (
        await api.get(f"/v1/customers/gold-0/changes?cursor={first['next_cursor']}", headers=AUTH)
    ).json()
    changes = first["items"] + rest["items"]
    assert rest["next_cursor"] is None
    assert {(c["dimension"], c["from"], c["to"]) for c in changes} == {
        ("value_tier", None, "gold"), ("activity_level", None, "active"),
        ("lifecycle_stage", None, "established"),
    }  # fmt: skip
    assert all(c["cause"] == "event" and c["published_at"] is None for c in changes)
    assert (await api.get("/v1/customers/nobody/changes", headers=AUTH)).status_code == 404
    for cursor in ("²", "1①", "١٢"):  # digits to str.isdigit, not to int()
        for path in ("/v1/changes", "/v1/customers/gold-0/changes"):
            response = await api.get(path, params={"cursor": cursor}, headers=AUTH)
            assert response.status_code == 422, (path, cursor, response.text)
            assert [e["field"] for e in response.json()["errors"]] == ["query.cursor"]
    stats = (await api.get("/v1/stats/tiers", headers=AUTH)).json()
    assert stats == {
        "customers": 9,
        "value_tier": {"gold": 5, "bronze": 3, "none": 1},
        "activity_level": {"active": 6, "inactive": 3},
        "lifecycle_stage": {"established": 5, "at_risk": 3, "lead": 1},
    }


async def test_a_customer_id_with_slashes_reads_through_both_routes(api: httpx.AsyncClient) -> None:
    body = (await api.get(f"/v1/customers/{SLASHED}", headers=AUTH)).json()
    assert (body["customer_id"], body["lifecycle_stage"]) == (SLASHED, "lead")
    history = (await api.get(f"/v1/customers/{SLASHED}/changes", headers=AUTH)).json()
    assert {c["customer_id"] for c in history["items"]} == {SLASHED}
    assert {c["to"] for c in history["items"]} == {"none", "active", "lead"}
    missing = await api.get("/v1/customers/acme/eu/43/changes", headers=AUTH)
    assert missing.status_code == 404 and "acme/eu/43" in missing.json()["detail"]


async def test_probes_report_ready_only_while_the_broker_answers_the_consumer(
    base_env: dict[str, str], scorer_db: str
) -> None:
    # A hung broker still accepts TCP connections (the kernel does): the scorer's check was
    # a connect, and said ready through a broker outage that stopped its consumer.
    with EmbeddedKafka() as broker:
        env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        settings = ScorerSettings.model_validate(env)
        consumer = make_consumer(settings, None)
        await consumer.start()
        pool = await create_pool(scorer_db, size=2, application_name="test")
        check = BrokerCheck(within=0.5)
        check.consumer = consumer
        app = create_app(settings, pool=pool, ready=readiness(pool, check, within=0.5))
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://scorer"
            ) as api:
                ready = await api.get("/readyz")
                assert ready.status_code == 200
                assert ready.json()["checks"] == {"database": True, "kafka": True}
                os.kill(broker.pid, signal.SIGSTOP)
                try:
                    hung = await api.get("/readyz")
                finally:
                    os.kill(broker.pid, signal.SIGCONT)
                assert hung.status_code == 503
                assert hung.json()["checks"] == {"database": True, "kafka": False}
        finally:
            await consumer.stop()
            await pool.close()


async def test_the_change_feed_spans_customers_filters_by_time_and_dimension_and_pages(
    api: httpx.AsyncClient, base_env: dict[str, str], scorer_db: str
) -> None:
    assert (await api.get("/v1/changes", headers=AUTH)).json()["items"] == []  # not yet out
    await _publish_all(base_env, scorer_db)
    everything = []
    cursor = None
    cursors = []
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/changes", params=params, headers=AUTH)).json()
        cursors.append(page["next_cursor"])
        everything += page["items"]
        assert all(c["published_at"] is not None for c in page["items"])
        tail = page["tail_cursor"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    again = (await api.get("/v1/changes", params={"cursor": tail}, headers=AUTH)).json()
    assert (again["items"], again["next_cursor"], again["tail_cursor"]) == ([], None, tail)
    # A filter matching nothing still moves the tail past what it read: polling with the
    # cursor sent back (none) read the whole history again each time.
    future = "9999-01-01T00:00:00Z"
    for nothing in ({"since": future}, {"since": future, "cursor": cursors[0]}):
        empty = (await api.get("/v1/changes", params=nothing, headers=AUTH)).json()
        assert (empty["items"], empty["next_cursor"], empty["tail_cursor"]) == ([], None, tail)
    per_customer = []
    for customer in {c["customer_id"] for c in everything}:
        history = await api.get(
            f"/v1/customers/{customer}/changes", params={"limit": 500}, headers=AUTH
        )
        per_customer += history.json()["items"]
    assert sorted(c["id"] for c in everything) == sorted(c["id"] for c in per_customer)
    customers = (await api.get("/v1/customers", params={"limit": 500}, headers=AUTH)).json()
    assert {c["customer_id"] for c in everything} == {c["customer_id"] for c in customers["items"]}

    tiers = (
        await api.get("/v1/changes", params={"dimension": "value_tier", "limit": 500}, headers=AUTH)
    ).json()
    assert tiers["items"] and {c["dimension"] for c in tiers["items"]} == {"value_tier"}
    latest = max(c["occurred_at"] for c in everything)
    recent = (
        await api.get("/v1/changes", params={"since": latest, "limit": 500}, headers=AUTH)
    ).json()
    assert recent["items"] and all(c["occurred_at"] >= latest for c in recent["items"])
    assert len(recent["items"]) < len(everything)

    naive = await api.get("/v1/changes", params={"since": "2026-01-01T00:00:00"}, headers=AUTH)
    assert naive.status_code == 422
    # Valid text whose UTC instant leaves datetime's range (found by schemathesis: a 500).
    for edge in ("0001-01-01T00:01:00+01:02", "9999-12-31T23:59:59-00:01"):
        outside = await api.get("/v1/changes", params={"since": edge}, headers=AUTH)
        assert outside.status_code == 422, outside.text
        [error] = outside.json()["errors"]  # shaped as FastAPI's own validation errors
        assert error["field"] == "query.since" and "Outside years 1-9999" in error["reason"]
    oldest = await api.get(
        "/v1/changes", params={"since": "0001-01-01T01:00:00+01:00"}, headers=AUTH
    )
    assert oldest.status_code == 200 and len(oldest.json()["items"]) == min(50, len(everything))
    bad = await api.get("/v1/changes", params={"dimension": "shoe_size"}, headers=AUTH)
    assert bad.status_code == 422


async def test_the_feed_says_what_the_topic_says_and_the_schema_describes_both(
    api: httpx.AsyncClient, base_env: dict[str, str], scorer_db: str
) -> None:
    await _publish_all(base_env, scorer_db)
    feed = (await api.get("/v1/changes", params={"limit": 500}, headers=AUTH)).json()["items"]
    settings = ScorerSettings.model_validate(base_env)
    topic = Topics(settings.topic_namespace).tier_changed
    records = await read_topic(settings.kafka_bootstrap_servers, topic, expect=len(feed), within=60)
    published = {}
    for record in records:
        value = json.loads(record.value)
        TierChanged.model_validate(value)
        published[value["id"]] = (value, dict(record.headers)[CHANGE_SEQ_HEADER])
    assert len(published) == len(feed) == len(records)
    schema = (await api.get("/v1/schemas/tier-changed", headers=AUTH)).json()
    assert schema["required"] == list(schema["properties"])  # every field, always written
    for item in feed:
        value, seq = published[item["id"]]
        assert set(value) == set(schema["properties"])
        assert {k: item[k] for k in value} == value  # the attributes too
        assert item["seq"] == int(seq)
    # The seq orders a customer's changes as they were made (history order).
    history = (await api.get("/v1/customers/gold-0/changes", headers=AUTH)).json()["items"]
    assert [c["seq"] for c in history] == sorted(c["seq"] for c in history)
    assert any(item["attributes"] for item in feed)
    assert (await api.get("/v1/schemas/tier-changed")).status_code == 401
