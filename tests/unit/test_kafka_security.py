"""Kafka TLS and SASL settings: refused at start when incomplete, and handed to every client.
(TLS against a broker: tests/integration/test_kafka_tls.py; no embedded broker speaks SASL.)"""

from __future__ import annotations

import ssl

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.actions.settings import ActionsSettings
from services.ingest.settings import IngestSettings
from services.scorer.settings import ScorerSettings
from shared.kafka import connection_options, make_consumer, make_producer
from shared.settings import ServiceSettings


def _settings(**env: str) -> ServiceSettings:
    return ServiceSettings.model_validate(env)


def test_plaintext_adds_nothing_to_the_clients() -> None:
    assert connection_options(_settings()) == {"bootstrap_servers": "127.0.0.1:9092"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
async def test_sasl_over_tls_gives_every_client_a_login_and_a_verifying_context(
    mechanism: str,
) -> None:
    settings = _settings(KAFKA_SECURITY_PROTOCOL="sasl_ssl", KAFKA_SASL_MECHANISM=mechanism,
                         KAFKA_SASL_USERNAME="svc", KAFKA_SASL_PASSWORD="pw")  # fmt: skip
    options = connection_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism.upper()
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "pw")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # aiokafka checks the combination when a client is made (it refuses a SASL mechanism it
    # does not know, or SASL_SSL without a context).
    producer, consumer = make_producer(settings), make_consumer(settings, "g", "t")
    assert isinstance(producer, AIOKafkaProducer) and isinstance(consumer, AIOKafkaConsumer)
    assert producer.client._sasl_mechanism == mechanism.upper()


def test_sasl_over_plain_tcp_has_no_tls_context() -> None:
    settings = _settings(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_USERNAME="u",
                         KAFKA_SASL_PASSWORD="p")  # fmt: skip
    options = connection_options(settings)
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options


SSL = {"KAFKA_SECURITY_PROTOCOL": "SSL"}
NEEDS_LOGIN = "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"


@pytest.mark.parametrize("service", [IngestSettings, ScorerSettings, ActionsSettings])
@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, NEEDS_LOGIN),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}, NEEDS_LOGIN),
        ({**SSL, "KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "KAFKA_SSL_CAFILE: no readable file"),
        ({**SSL, "KAFKA_SSL_KEYFILE": __file__}, "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
    ],
)
def test_incomplete_security_settings_are_refused_naming_what_is_missing(
    service: type[ServiceSettings], env: dict[str, str], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        service.model_validate(env)


def test_settings_that_build_no_kafka_client_leave_its_security_alone() -> None:
    # The migrate Job reads the shared ConfigMap (SASL_SSL, the CA's path) but has neither
    # the SASL password nor the certificate mounted: it was refused, and no upgrade ran.
    shared = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "svc",
              "KAFKA_SSL_CAFILE": "/etc/tierstream/kafka-ca.pem"}  # fmt: skip
    assert ServiceSettings.model_validate(shared).kafka_security_protocol == "SASL_SSL"
    # Certificates are not read without TLS: a leftover path is no error.
    plain = {"KAFKA_SSL_CAFILE": "/no/such/ca.pem"}
    assert IngestSettings.model_validate(plain).kafka_security_problem() is None


def test_an_unset_variable_passed_as_empty_is_unset() -> None:
    # docker-compose and Kubernetes pass "" for a declared variable nobody set.
    settings = _settings(KAFKA_SSL_CAFILE="", KAFKA_SASL_USERNAME=" ")
    assert settings.kafka_ssl_cafile is None and settings.kafka_sasl_username is None
