"""The copy of the Postgres offsets to the consumer group is best effort, but a failed copy
is counted (lag tooling that reads the group sees an older offset meanwhile)."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from shared.group_commit import GroupCommitter
from shared.kafka import ensure_topics
from shared.settings import ServiceSettings


async def test_a_commit_the_broker_refuses_is_counted_and_forgotten(kafka_bootstrap: str) -> None:
    topic = f"group-commit-{uuid.uuid4().hex[:8]}"
    await ensure_topics(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap), [topic])
    # No group: the broker has nowhere to store the offsets, so every commit fails.
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None)
    await consumer.start()
    failures = Counter("failures_total", "f", registry=CollectorRegistry())
    committer = GroupCommitter(consumer, failures=failures)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        committer.offer({TopicPartition(topic, 0): 3})
        assert committer.task is not None
        await committer.task
        committer.offer({TopicPartition(topic, 0): 4})
        await committer.task
    finally:
        await committer.close()
        await consumer.stop()
    assert failures._value.get() == 2 and committer.pending == {}
