"""The broker side of the actions service: the consumer group sees the offsets stored in
Postgres (for lag-based scaling), /readyz reports the broker, quickly, both ways, and the
trace carried by a tier change's headers continues in the planning span."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.clock import FixedClock
from shared.topics import Topics
from shared.tracing import make_tracer
from tests.faults.outages import GatedBroker
from tests.integration.actions.support import (
    actions_settings,
    eventually,
    fetch,
    produce_changes,
    running_actions,
    tier_change,
)

READY_TIMEOUT_S = 0.5
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def gated_broker() -> AsyncIterator[GatedBroker]:
    """A private broker behind a TCP gate we can close (the session broker must stay up)."""
    broker = await GatedBroker().start()
    yield broker
    await broker.stop()


async def _readyz(url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get("/readyz")
    return response.status_code, response.json()["checks"], time.monotonic() - started


async def _ready_checks(url: str) -> dict[str, Any] | None:
    status, checks, _ = await _readyz(url)
    return checks if status == 200 else None


async def _group_offsets(bootstrap: str, group: str, tps: list[TopicPartition]) -> list[Any]:
    """The group's committed offsets, read as a consumer does (no group join, no admin call)."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        return [await probe.committed(tp) for tp in tps]
    finally:
        await probe.stop()


async def test_group_offsets_follow_postgres_and_readyz_reports_the_broker(
    base_env: dict[str, str], gated_broker: GatedBroker, topic_namespace: str, clock: FixedClock
) -> None:
    bootstrap = gated_broker.bootstrap_servers
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    settings = actions_settings(env, ready_timeout_s=READY_TIMEOUT_S)
    topic = Topics(topic_namespace).tier_changed
    spans = InMemorySpanExporter()
    async with running_actions(settings, clock, make_tracer("actions", exporter=spans)) as url:
        assert await eventually(lambda: _ready_checks(url), what="ready", within=30) == {
            "database": True, "kafka": True}  # fmt: skip

        changes = [tier_change(f"chg-{i}", f"cust-{i}", "value_tier", "silver", "gold")
                   for i in range(6)]  # fmt: skip
        trace = [("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode())]
        await produce_changes(bootstrap, topic_namespace, changes, trace=trace)

        async def stored() -> dict[int, int] | None:
            rows = await fetch(settings.database_url, "SELECT partition, next_offset"
                               " FROM actions.consumer_offset WHERE topic = $1", topic)  # fmt: skip
            offsets = {r["partition"]: r["next_offset"] for r in rows}
            return offsets if sum(offsets.values()) == len(changes) else None

        in_postgres = await eventually(stored, what="the batch in Postgres")
        assert in_postgres is not None
        planned = [s for s in spans.get_finished_spans() if s.name == "actions.plan"]
        assert [f"{s.context.trace_id:032x}" for s in planned] == [TRACE_ID] * len(changes)
        tps = [TopicPartition(topic, p) for p in range(3)]
        expected = [in_postgres.get(p) for p in range(3)]

        async def mirrored() -> bool:
            return await _group_offsets(bootstrap, settings.consumer_group, tps) == expected

        await eventually(mirrored, what=f"group offsets {expected}", within=15)

        await gated_broker.gate.close()  # the broker drops off the network
        status, checks, took = await _readyz(url)
        assert (status, checks) == (503, {"database": True, "kafka": False})
        assert took < 3 * READY_TIMEOUT_S + 1.0
        await gated_broker.gate.open()

        await eventually(lambda: _ready_checks(url), what="ready again", within=20)
