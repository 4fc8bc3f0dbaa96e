"""A dead-lettered record fits the broker's limit (KAFKA_MAX_MESSAGE_BYTES) with its
headers, however large the poison was: a refused DLQ write stops the partition."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.dead_letters import DLQ_FRAMING_BYTES, Poison, dead_letter
from shared.kafka import ensure_topics, make_producer
from shared.settings import ServiceSettings
from shared.topics import Topics
from tests.integration.scorer.support import read_topic

LIMIT = 8192


@dataclass
class _Consumed:  # what a consumer handed the service: the fields dead_letter reads
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


async def test_a_poison_record_larger_than_the_limit_is_cut_to_fit_and_flagged(
    kafka_bootstrap: str,
) -> None:
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_max_message_bytes=LIMIT
    )
    await ensure_topics(settings, [Topics.dlq(topic)])
    small, huge = b'{"event_id": "a"}', b"x" * (3 * LIMIT)
    poison = [
        Poison(
            _Consumed(topic, 0, n, b"customer-1", value, [("traceparent", b"00-ab-cd-01")]), "bad"
        )
        for n, value in enumerate((small, huge))
    ]
    producer = make_producer(settings)
    await producer.start()
    try:
        await dead_letter(producer, poison, group_id="g", max_message_bytes=LIMIT)
    finally:
        await producer.stop()
    kept, cut = await read_topic(kafka_bootstrap, Topics.dlq(topic), expect=2)
    assert kept.value == small and ("dlq_truncated", b"true") not in kept.headers
    assert ("dlq_truncated", b"true") in cut.headers and huge.startswith(cut.value)
    size = len(cut.value) + len(cut.key) + sum(len(k) + len(v) for k, v in cut.headers)
    assert LIMIT - DLQ_FRAMING_BYTES - 64 <= size <= LIMIT - DLQ_FRAMING_BYTES
