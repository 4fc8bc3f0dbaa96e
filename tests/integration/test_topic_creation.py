"""Topics Tierstream creates carry the configured partitions, replicas and in-sync minimum."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import ValidationError

from shared.kafka import ensure_topics
from shared.settings import ServiceSettings


async def test_created_topics_carry_the_partitions_and_the_in_sync_minimum(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = ServiceSettings(
        kafka_bootstrap_servers=kafka_bootstrap, partitions=3, min_insync_replicas=1
    )
    topic = f"{topic_namespace}.replicated"
    await ensure_topics(settings, [topic])
    await ensure_topics(settings, [topic])  # a second start finds it and leaves it alone
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    assert len(description["partitions"]) == 3
    [resource] = response.resources
    configs = {entry[0]: entry[1] for entry in resource[4]}
    assert configs["min.insync.replicas"] == "1"


def test_an_in_sync_minimum_above_the_replicas_is_refused() -> None:
    with pytest.raises(ValidationError, match="must not exceed TIERSTREAM_REPLICATION_FACTOR"):
        ServiceSettings(replication_factor=2, min_insync_replicas=3)
    assert ServiceSettings(replication_factor=3, min_insync_replicas=2).min_insync_replicas == 2
