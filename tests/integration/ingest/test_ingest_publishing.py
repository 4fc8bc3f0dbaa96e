"""What ingest writes to Kafka: topic per type, key, CloudEvents headers, exact values."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import httpx

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
