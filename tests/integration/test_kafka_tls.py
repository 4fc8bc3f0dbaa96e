"""The services' Kafka clients over TLS (KAFKA_SECURITY_PROTOCOL=SSL): the broker's
certificate checked against KAFKA_SSL_CAFILE, and a client certificate for a broker that
requires one. The embedded broker speaks plain TCP; a gate in front of it ends TLS and is
the only address the broker advertises, so every connection goes through TLS."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiokafka.errors import KafkaConnectionError

from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import ServiceSettings
from tests.faults.outages import GatedBroker


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_broker(ca: trustme.CA) -> AsyncIterator[GatedBroker]:
    """A broker whose gate presents a certificate for 127.0.0.1 signed by `ca` and requires
    a client certificate signed by it too."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    broker = await GatedBroker(tls=context).start()
    yield broker
    await broker.stop()


def _settings(broker: GatedBroker, **security: str) -> ServiceSettings:
    return ServiceSettings.model_validate({
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_REQUEST_TIMEOUT_MS": "3000", **security,
    })  # fmt: skip


async def test_topics_records_and_a_group_go_through_verified_tls(
    tls_broker: GatedBroker, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file, client_file = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("tierstream-client")
    client.private_key_and_cert_chain_pem.write_to_path(str(client_file))  # key and cert
    settings = _settings(
        tls_broker, KAFKA_SSL_CAFILE=str(ca_file), KAFKA_SSL_CERTFILE=str(client_file),
        KAFKA_SESSION_TIMEOUT_MS="6000",
    )  # fmt: skip
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over tls", key=b"customer-1")
    finally:
        await producer.stop()
    consumer = make_consumer(settings, f"g-{topic}", topic)
    await consumer.start()
    try:
        got: list[bytes] = []
        for _ in range(40):
            batches = await consumer.getmany(timeout_ms=500)
            got += [r.value for records in batches.values() for r in records if r.value]
            if got:
                break
        assert got == [b"over tls"]
    finally:
        await consumer.stop()


@pytest.mark.parametrize("refusal", ["untrusted broker", "no client certificate"])
async def test_a_broker_the_client_cannot_verify_or_that_refuses_it_is_not_used(
    tls_broker: GatedBroker, ca: trustme.CA, tmp_path: Path, refusal: str
) -> None:
    ca_file, client_file = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.issue_cert("tierstream-client").private_key_and_cert_chain_pem.write_to_path(
        str(client_file)
    )
    if refusal == "untrusted broker":  # the client trusts another CA only
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        security = {"KAFKA_SSL_CAFILE": str(ca_file), "KAFKA_SSL_CERTFILE": str(client_file)}
    else:
        ca.cert_pem.write_to_path(str(ca_file))
        security = {"KAFKA_SSL_CAFILE": str(ca_file)}
    with pytest.raises(KafkaConnectionError):
        await ensure_topics(_settings(tls_broker, **security), ["never-created"])
