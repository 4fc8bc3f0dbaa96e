"""Broker outage (issue 3; issue 7 scenario 5): 503 + Retry-After within the publish timeout
(not after the broker's request timeout), then recovery on a new broker at the same address
with no restart of ingest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from services.ingest.settings import IngestSettings
from shared.embedded import EmbeddedKafka
from shared.kafka import ensure_topics
from shared.metrics import new_registry
from tests.faults.outages import GatedBroker
from tests.integration.ingest.ingest_helpers import (
    AUTH,
    ingest_settings,
    login,
    read_records,
    topics_of,
    wait_until,
    with_event_id,
)

PUBLISH_TIMEOUT_S = 1.5
# The broker's request timeout, far beyond the publish timeout: a publish or readiness check
# that waited for the broker instead of its own bound would hang this long (the first request
# after the kill waits on the live connection, and a metadata wait retries until then).
REQUEST_TIMEOUT_MS = 120_000
# A hang detector, not a timing bound: 10 times the publish timeout, a sixth of the request
# timeout. An answer within it came from ingest's own bound, whatever the machine's load.
HANG_S = 20.0
# Requests a client makes, a second apart, until a new broker at the same address is used.
RECOVERY_ATTEMPTS = 10


@pytest.fixture
def private_broker() -> Iterator[EmbeddedKafka]:
    """A broker of this test's own, which it may stop and replace."""
    broker = EmbeddedKafka().start()
    yield broker
    broker.stop()


@pytest.fixture
async def outage_settings(private_broker: EmbeddedKafka, topic_namespace: str) -> IngestSettings:
    settings = ingest_settings(
        private_broker.bootstrap_servers,
        topic_namespace,
        publish_timeout_s=PUBLISH_TIMEOUT_S,
        kafka_request_timeout_ms=REQUEST_TIMEOUT_MS,
        retry_after_s=3,
        ready_timeout_s=1.0,
    )
    await ensure_topics(settings, topics_of(settings).all())
    return settings


@pytest.fixture
async def outage_client(
    outage_settings: IngestSettings,
) -> AsyncIterator[tuple[httpx.AsyncClient, CollectorRegistry]]:
    registry = new_registry()
    publisher = KafkaPublisher(
        outage_settings,
        timeout_s=outage_settings.publish_timeout_s,
        check_timeout_s=outage_settings.ready_timeout_s,
    )
    await publisher.start()
    app = create_app(outage_settings, publisher=publisher, registry=registry)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest"
    ) as client:
        yield client, registry
    await publisher.stop()


async def unless_hung(answer: Awaitable[httpx.Response]) -> httpx.Response:
    """The answer, failing the test if none came before the hang detector: the broker's
    request timeout (REQUEST_TIMEOUT_MS) is far longer, so only ingest's own bound answers."""
    try:
        return await asyncio.wait_for(answer, HANG_S)
    except TimeoutError:
        raise AssertionError(
            f"no answer in {HANG_S:.0f}s: ingest waited for the broker (request timeout"
            f" {REQUEST_TIMEOUT_MS // 1000}s) instead of answering 503 at its publish timeout"
        ) from None


async def test_broker_down_gives_503_with_retry_after_and_recovers_without_restart(
    outage_client: tuple[httpx.AsyncClient, CollectorRegistry],
    outage_settings: IngestSettings,
    private_broker: EmbeddedKafka,
) -> None:
    client, registry = outage_client
    assert (await client.post("/v1/events", json=login(), headers=AUTH)).status_code == 202

    private_broker.kill()
    for _ in range(3):  # the first hits the live connection, later ones a refused bootstrap
        response = await unless_hung(client.post("/v1/events", json=login(), headers=AUTH))
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "3"
        assert response.headers["content-type"] == "application/problem+json"
    batch = await unless_hung(
        client.post("/v1/events/batch", json={"events": [login()]}, headers=AUTH)
    )
    assert batch.status_code == 503
    assert (await unless_hung(client.get("/readyz"))).status_code == 503
    assert registry.get_sample_value("tierstream_ingest_broker_available") == 0
    failed = {"type": "login", "source": "shop", "outcome": "failed"}
    assert registry.get_sample_value("tierstream_ingest_events_total", failed) == 4

    # A new broker on the same address; memory storage starts empty, so its topics are
    # recreated, as a real cluster's would have survived.
    replacement = EmbeddedKafka(port=private_broker.port).start()
    try:
        await ensure_topics(outage_settings, topics_of(outage_settings).all())
        event = login()
        # As a client does: the same event again after a 503, a few times. The producer may
        # still be backing off its reconnects for the first one (a flake in a full run).
        for _ in range(RECOVERY_ATTEMPTS):
            response = await unless_hung(client.post("/v1/events", json=event, headers=AUTH))
            if response.status_code != 503:
                break
            await asyncio.sleep(1.0)
        assert response.status_code == 202, response.text
        assert (await client.get("/readyz")).status_code == 200
        assert registry.get_sample_value("tierstream_ingest_broker_available") == 1
        topic = topics_of(outage_settings).logins
        records = await read_records(outage_settings, topic, until=with_event_id(event["event_id"]))
        assert event["event_id"] in {dict(r.headers)["ce_id"].decode() for r in records}
    finally:
        replacement.kill()  # stop() would wait for the still-connected publisher


async def test_a_broker_missing_at_startup_is_retried_on_first_use(topic_namespace: str) -> None:
    broker = EmbeddedKafka()
    settings = ingest_settings(
        broker.bootstrap_servers, topic_namespace, publish_timeout_s=PUBLISH_TIMEOUT_S
    )
    publisher = KafkaPublisher(settings, timeout_s=PUBLISH_TIMEOUT_S)
    await publisher.start()  # nobody listens yet: start() must not raise
    app = create_app(settings, publisher=publisher)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        assert (await client.post("/v1/events", json=login(), headers=AUTH)).status_code == 503
        with broker:
            await ensure_topics(settings, topics_of(settings).all())
            response = await client.post("/v1/events", json=login(), headers=AUTH)
            assert response.status_code == 202, response.text
            await publisher.stop()


async def test_a_failed_readiness_probe_never_retires_the_producer_in_use(
    outage_settings: IngestSettings,
) -> None:
    # The probe's bound is shorter than a publish's: a slow but working broker failed the
    # probe, which retired the producer the requests in flight were using (503s for them,
    # and a reconnect for every request after).
    publisher = KafkaPublisher(outage_settings, timeout_s=PUBLISH_TIMEOUT_S,
                               check_timeout_s=1e-6)  # no answer is that fast  # fmt: skip
    await publisher.start()
    app = create_app(outage_settings, publisher=publisher, registry=new_registry())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            assert (await client.post("/v1/events", json=login(), headers=AUTH)).status_code == 202
            producer = publisher._producer
            assert (await client.get("/readyz")).status_code == 503
            assert publisher._producer is producer and not publisher._retiring
            assert (await client.post("/v1/events", json=login(), headers=AUTH)).status_code == 202
    finally:
        await publisher.stop()


async def test_a_retired_producer_whose_close_times_out_is_closed_by_force(
    gated_broker: GatedBroker, topic_namespace: str
) -> None:
    # The broker stops answering with batches in flight: the retired producer's flush
    # outlasts its bound. aiokafka's stop() then never ran again, and the old producer's
    # sender went on beside its successor, with its connections, for good.
    settings = ingest_settings(gated_broker.bootstrap_servers, topic_namespace,
                               publish_timeout_s=1.0, kafka_request_timeout_ms=3000)  # fmt: skip
    await ensure_topics(settings, topics_of(settings).all())
    publisher = KafkaPublisher(settings, timeout_s=settings.publish_timeout_s)
    await publisher.start()
    app = create_app(settings, publisher=publisher, registry=new_registry())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            one = login(customer_id="c1")
            assert (await client.post("/v1/events", json=one, headers=AUTH)).status_code == 202
            retired = publisher._producer
            gated_broker.gate.stall()
            answers = await asyncio.gather(*(
                client.post("/v1/events", json=login(customer_id="c1"), headers=AUTH)
                for _ in range(3)
            ))  # fmt: skip
            assert [a.status_code for a in answers] == [503] * 3
            assert retired is not None and publisher._retiring
            await asyncio.wait_for(asyncio.wait(set(publisher._retiring)), HANG_S)
            assert retired._sender.sender_task.done()  # nothing of it runs any more
    finally:
        await publisher.stop()


async def test_a_producer_start_slower_than_the_publish_timeout_still_connects(
    outage_settings: IngestSettings,
) -> None:
    # No start is that fast: each request's deadline used to cancel the start, and the next
    # one began again from nothing; a broker slower than the publish timeout never got a
    # producer. The start now goes on behind the requests that time out.
    publisher = KafkaPublisher(outage_settings, timeout_s=1e-6)
    try:
        await publisher.start()  # its wait times out (a missing broker is retried later too)
        assert publisher._producer is None

        await wait_until(lambda: publisher._producer is not None, timeout_s=HANG_S)
    finally:
        await publisher.stop()
