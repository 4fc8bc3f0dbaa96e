"""What ingest writes to Kafka: topic per type, key, CloudEvents headers, exact values."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from services.ingest import publisher as publisher_module
from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from services.ingest.settings import IngestSettings
from shared.contracts import event_ce_type, parse_event
from shared.kafka import make_producer
from tests.integration.ingest.ingest_helpers import (
    AUTH,
    ce_id,
    header,
    login,
    purchase,
    read_records,
    support,
    topics_of,
    with_event_id,
)


async def test_each_type_lands_on_its_topic_keyed_by_customer_with_cloudevents_headers(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    events = [
        purchase(amount=0.1, items=[{"sku": "s1", "quantity": 2, "price": "0.05"}]),
        login(country="DE", attributes={"region": "EU", "score": 1.5, "b2b": True}),
        support(nps=9, satisfaction=5),
    ]
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202, response.text
    topics = topics_of(settings)
    for event, topic in zip(events, topics.events, strict=True):
        records = await read_records(settings, topic, until=with_event_id(event["event_id"]))
        [record] = records
        assert record.key == event["customer_id"].encode()
        assert header(record, "ce_specversion") == "1.0"
        assert header(record, "ce_id") == event["event_id"]
        assert header(record, "ce_source") == "shop"
        assert header(record, "ce_type") == event_ce_type(event["type"])
        assert datetime.fromisoformat(header(record, "ce_time")) == datetime.fromisoformat(
            event["occurred_at"]
        )
        assert header(record, "content-type") == "application/json"
        published = parse_event(record.value)
        assert published.event_id == event["event_id"] and published.type == event["type"]


async def test_published_values_are_exact_json_with_decimals_as_strings(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    event = purchase(
        amount=0.1, items=[{"sku": "s1", "price": 0.3}], attributes={"ratio": 2.0, "seats": 3}
    )
    assert (await client.post("/v1/events", json=event, headers=AUTH)).status_code == 202
    topic = topics_of(settings).purchases
    [record] = await read_records(settings, topic, until=with_event_id(event["event_id"]))
    value = json.loads(record.value)
    assert value["amount"] == "0.1" and value["items"][0]["price"] == "0.3"
    assert value["currency"] == "EUR" and value["order_id"] == event["order_id"]
    assert value["attributes"] == {"ratio": 2.0, "seats": 3}
    assert isinstance(value["attributes"]["ratio"], float)
    assert isinstance(value["attributes"]["seats"], int)


async def test_source_is_filled_from_the_api_key_only_when_absent(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    customer = "cust-source"
    given = login(customer_id=customer, source="crm-sync")
    absent = login(customer_id=customer)
    for event in (given, absent):
        assert (await client.post("/v1/events", json=event, headers=AUTH)).status_code == 202
    topic = topics_of(settings).logins
    records = await read_records(settings, topic, until=with_event_id(absent["event_id"]))
    sources = {ce_id(r): (json.loads(r.value)["source"], header(r, "ce_source")) for r in records}
    assert sources == {
        given["event_id"]: ("crm-sync", "crm-sync"),
        absent["event_id"]: ("shop", "shop"),
    }


async def test_resending_the_same_event_id_is_accepted_again_and_published_again(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    event = purchase()
    for _ in range(2):
        response = await client.post("/v1/events", json=event, headers=AUTH)
        assert response.status_code == 202, response.text
        assert response.json()["event_ids"] == [event["event_id"]]
    topic = topics_of(settings).purchases
    records = await read_records(
        settings, topic, until=lambda rs: sum(ce_id(r) == event["event_id"] for r in rs) == 2
    )
    # At-least-once on the wire; the scorer de-duplicates by event_id.
    assert [ce_id(r) for r in records] == [event["event_id"]] * 2
    assert records[0].value == records[1].value


async def test_one_customers_events_keep_their_order_on_one_partition(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    events = [login(customer_id="cust-ordered") for _ in range(20)]
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202
    topic = topics_of(settings).logins
    records = await read_records(settings, topic, until=lambda rs: len(rs) >= 20)
    assert [ce_id(r) for r in records] == [e["event_id"] for e in events]
    assert len({r.partition for r in records}) == 1


async def test_a_request_larger_than_one_producer_batch_keeps_its_order_on_one_partition(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    events = [login(customer_id="cust-big", device="d" * 250) for _ in range(1000)]
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202, response.text
    records = await read_records(
        settings, topics_of(settings).logins, until=lambda rs: len(rs) >= 1000
    )
    assert sum(len(r.value) for r in records) > 256 * 1024  # more than one batch of the producer
    assert [ce_id(r) for r in records] == [e["event_id"] for e in events]
    assert len({r.partition for r in records}) == 1


async def test_events_land_on_the_partition_a_plain_aiokafka_send_picks_for_their_key(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    customers = [f"cust-{i}-\u00e9" for i in range(300)]
    events = [login(customer_id=c) for c in customers]
    response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202, response.text
    reference_topic = topics_of(settings).purchases  # same partition count, written by send()
    producer = make_producer(settings)
    await producer.start()
    try:
        sent = [await producer.send(reference_topic, b"x", key=c.encode()) for c in customers]
        expected = {c: (await ack).partition for c, ack in zip(customers, sent, strict=True)}
    finally:
        await producer.stop()
    records = await read_records(
        settings, topics_of(settings).logins, until=lambda rs: len(rs) >= 300
    )
    assert {r.key.decode(): r.partition for r in records} == expected
    assert len(set(expected.values())) == settings.partitions


async def test_concurrent_requests_for_the_same_partitions_are_all_published_in_request_order(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    customers = [f"cust-shared-{i}" for i in range(5)]
    requests = [[login(customer_id=customers[i % 5]) for i in range(100)] for _ in range(8)]
    responses = await asyncio.gather(
        *(client.post("/v1/events/batch", json={"events": b}, headers=AUTH) for b in requests)
    )
    assert [r.status_code for r in responses] == [202] * 8
    records = await read_records(
        settings, topics_of(settings).logins, until=lambda rs: len(rs) >= 800
    )
    published = [ce_id(r) for r in records]
    assert sorted(published) == sorted(e["event_id"] for b in requests for e in b)
    position = {event_id: i for i, event_id in enumerate(published)}
    for batch in requests:  # within a request, each customer's events keep their order
        for customer in customers:
            ids = [e["event_id"] for e in batch if e["customer_id"] == customer]
            assert [position[i] for i in ids] == sorted(position[i] for i in ids)


async def test_an_event_over_the_brokers_record_limit_is_a_413_naming_it_not_a_503(
    settings: IngestSettings, registry: CollectorRegistry
) -> None:
    # Within the body limit, but its record is over the broker's limit (KAFKA_MAX_MESSAGE_BYTES,
    # set low here: at the defaults an event's fields cannot reach Apache Kafka's 1,048,588
    # bytes): a real broker would refuse it on every retry.
    tight = settings.model_copy(update={"kafka_max_message_bytes": 8192})
    event = _over_8_kib("cust-huge")
    publisher = KafkaPublisher(tight, timeout_s=tight.publish_timeout_s)
    await publisher.start()
    try:
        producer = publisher._producer
        transport = httpx.ASGITransport(
            app=create_app(tight, publisher=publisher, registry=registry)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post("/v1/events", json=event, headers=AUTH)
            assert response.status_code == 413, response.text
            problem = response.json()
            assert problem["title"] == "Event too large" and event["event_id"] in problem["detail"]
            [error] = problem["errors"]
            assert (error["field"], error["type"]) == ("event", "record_too_large")
            assert f"at most {tight.kafka_max_message_bytes}" in error["reason"]
            small = login(customer_id="cust-small")
            assert (await client.post("/v1/events", json=small, headers=AUTH)).status_code == 202
        assert publisher._producer is producer  # the broker was fine: no producer was retired
    finally:
        await publisher.stop()


def _over_8_kib(customer_id: str) -> dict[str, Any]:
    """A valid event whose record is over 8 KiB (attribute text is bounded: several)."""
    return login(customer_id=customer_id, attributes={f"notes{i}": "n" * 1000 for i in range(9)})


async def test_a_batch_with_one_event_over_the_limit_publishes_nothing(
    settings: IngestSettings, registry: CollectorRegistry
) -> None:
    tight = settings.model_copy(update={"kafka_max_message_bytes": 8192})
    big = _over_8_kib("cust-b")
    events = [login(customer_id="cust-a"), big, login(customer_id="cust-c")]
    publisher = KafkaPublisher(tight, timeout_s=tight.publish_timeout_s)
    await publisher.start()
    try:
        app = create_app(tight, publisher=publisher, registry=registry)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
            assert response.status_code == 413, response.text
            [error] = response.json()["errors"]
            assert (error["field"], error["index"]) == ("events[1]", 1)
            marker = login(customer_id="cust-marker")
            assert (await client.post("/v1/events", json=marker, headers=AUTH)).status_code == 202
    finally:
        await publisher.stop()
    records = await read_records(
        tight, topics_of(tight).logins, until=with_event_id(marker["event_id"])
    )
    assert [ce_id(r) for r in records] == [marker["event_id"]]  # none of the batch's


async def test_a_broker_refusing_a_record_as_too_large_is_a_413_and_keeps_the_producer(
    client: httpx.AsyncClient, publisher: KafkaPublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest's mapping of the broker's MESSAGE_TOO_LARGE answer (error 10, which a broker
    whose limit is below KAFKA_MAX_MESSAGE_BYTES gives): a 413, the producer kept.

    The answer is played by the batch's future because the embedded broker (tansu) enforces
    no size limit: it accepted a 2 MB record on a topic created with max.message.bytes=1000.
    Kept here, not in tests/unit/ingest: it needs this module's started publisher and app
    fixtures (a real producer on the real broker), which unit tests may not use.
    """

    async def refused(producer: object, batches: object) -> list[asyncio.Future[None]]:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        answer.set_exception(MessageSizeTooLargeError())
        return [answer]

    producer = publisher._producer
    with monkeypatch.context() as patched:
        patched.setattr(publisher_module, "send_batches", refused)
        response = await client.post("/v1/events", json=login(), headers=AUTH)
    assert response.status_code == 413, response.text
    assert "Retry-After" not in response.headers
    assert "refused an event of this request as too large" in response.json()["detail"]
    assert publisher.available and publisher._producer is producer
    assert (await client.post("/v1/events", json=login(), headers=AUTH)).status_code == 202
