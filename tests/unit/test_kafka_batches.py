"""Producer batches stay within the broker's record-batch limit (KAFKA_MAX_MESSAGE_BYTES)."""

from __future__ import annotations

import pytest

from shared.kafka import make_producer
from shared.kafka_batches import build_batches
from shared.settings import ServiceSettings


@pytest.mark.parametrize("limit", [8_192, 100_000, 1_048_588])
async def test_a_batch_of_many_records_never_exceeds_the_brokers_limit(limit: int) -> None:
    producer = make_producer(ServiceSettings(kafka_max_message_bytes=limit))
    try:
        records = [(b"key", b"v" * 1000, [("ce_id", b"x" * 36)]) for _ in range(1000)]
        batches = build_batches(producer, {("topic", 0): records})
        assert sum(b.builder.record_count() for b in batches) == 1000
        assert max(b.builder.size() for b in batches) <= limit
    finally:
        await producer.stop()
