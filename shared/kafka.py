"""aiokafka plumbing: producer/consumer factories, topic creation, CloudEvents headers.

No idempotent producer and no transactions: the embedded broker supports neither, and
correctness comes from the Postgres inbox/outbox/offset design instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from urllib.parse import quote

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
TraceHeaders = Sequence[tuple[str, bytes]]  # W3C trace context headers to add to records
TOPIC_ALREADY_EXISTS = 36
# Below the broker's limit, for what aiokafka's batch-size check leaves out (batch header).
BATCH_MARGIN = 1024


def connection_options(settings: ServiceSettings) -> dict[str, object]:
    """Where the brokers are and how to talk to them (TLS, SASL), for every client."""
    options: dict[str, object] = {"bootstrap_servers": settings.kafka_bootstrap_servers}
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return options
    options["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def make_producer(settings: ServiceSettings, **overrides: object) -> AIOKafkaProducer:
    """A producer with acks=all, bounded request time and batching on."""
    options: dict[str, object] = {
        **connection_options(settings),
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 5,
        # A batch is the unit the broker's size limit applies to (records over it go alone).
        "max_batch_size": min(256 * 1024, settings.kafka_max_message_bytes - BATCH_MARGIN),
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "retry_backoff_ms": 100,
        "metadata_max_age_ms": 30_000,
        "max_request_size": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: ServiceSettings, group_id: str | None, *topics: str, **overrides: object
) -> AIOKafkaConsumer:
    """A consumer with auto-commit off: offsets live in Postgres, not in the group."""
    options: dict[str, object] = {
        **connection_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "heartbeat_interval_ms": max(100, settings.kafka_session_timeout_ms // 5),
        "request_timeout_ms": max(settings.kafka_request_timeout_ms, 40_000)
        if group_id
        else settings.kafka_request_timeout_ms,
        "max_poll_interval_ms": 300_000,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "metadata_max_age_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(settings: ServiceSettings, topics: Iterable[str]) -> None:
    """Create the topics that are missing, with the configured partitions and replication."""
    admin = AIOKafkaAdminClient(
        **connection_options(settings),
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        if not wanted:
            return
        configs = (
            {"min.insync.replicas": str(settings.min_insync_replicas)}
            if settings.min_insync_replicas is not None
            else None
        )
        new = [
            NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=configs)
            for t in wanted
        ]
        with contextlib.suppress(TopicAlreadyExistsError):
            response = await admin.create_topics(new)
            for topic, code, message in _topic_errors(response):
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"cannot create topic {topic}: {code} {message}")
    finally:
        await admin.close()


def _topic_errors(response: object) -> Sequence[tuple[str, int, str | None]]:
    errors = getattr(response, "topic_errors", [])
    return [(e[0], e[1], e[2] if len(e) > 2 else None) for e in errors]


@functools.lru_cache(maxsize=1024)  # sources repeat: a few sending systems
def uri_reference(text: str) -> str:
    """`text` as a URI reference: RFC 3986's reserved and unreserved characters stay, anything
    else (a space, a non-ASCII letter, `%`) is percent-encoded."""
    return quote(text, safe="!#$&'()*+,/:;=?@[]~")


# On each tier-changed record: the change's `seq` in the scorer's history, which grows with
# each of a customer's changes (taken under the customer's row lock). Consumers can tell a
# replayed or reordered older change from the latest by it; the event's times cannot.
CHANGE_SEQ_HEADER = "tierstream_seq"


def cloudevent_headers(
    *, ce_id: str, ce_source: str, ce_type: str, ce_time: datetime, extra: Headers | None = None
) -> Headers:
    """CloudEvents Kafka binding, binary mode: the envelope travels in `ce_*` headers (the
    event's own `source` field keeps the text as sent)."""
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", uri_reference(ce_source).encode()),  # CloudEvents: a URI-reference
        ("ce_type", ce_type.encode()),
        ("ce_time", ce_time.isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    return headers + (extra or [])


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """The first header called `name`, decoded, or None."""
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace") if value is not None else None
    return None


def dlq_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    error: str,
    original: Sequence[tuple[str, bytes]] | None,
) -> Headers:
    """Headers of a dead-lettered record: where it came from and why it failed."""
    kept = [(k, v) for k, v in (original or ()) if not k.startswith("dlq_")]
    return [
        *kept,
        ("dlq_original_topic", topic.encode()),
        ("dlq_original_partition", str(partition).encode()),
        ("dlq_original_offset", str(offset).encode()),
        ("dlq_error", error[:2000].encode(errors="replace")),
    ]
