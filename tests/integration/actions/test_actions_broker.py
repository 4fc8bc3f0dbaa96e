"""The broker side of the actions service: the consumer group sees the offsets stored in
Postgres (for lag-based scaling), /readyz reports the broker both ways, and answers within
its own bound when the broker is off the network or does not answer at all (not after the
broker's request timeout), and the trace carried by a tier change's headers continues in the
planning span."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import httpx
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
# The broker's request timeout: a broker request that gets no answer waits this long, so a
# /readyz that waited for the broker instead of READY_TIMEOUT_S would hang that long.
REQUEST_TIMEOUT_MS = 120_000
# A hang detector, not a timing bound: 40 times the readiness bound, a sixth of the request
# timeout. Any answer within it came from the readiness bound, whatever the machine's load.
HANG_S = 20.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@contextlib.contextmanager
def _frozen(broker: GatedBroker) -> Iterator[None]:
    """The broker process stopped (SIGSTOP): its connections stay open and the kernel still
    accepts new ones, but no request is answered, as with a hung or unreachable host."""
    process = broker._proc
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


async def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    """/readyz's status and checks; fails if it hangs (see HANG_S)."""
    async with httpx.AsyncClient(base_url=url, timeout=HANG_S) as client:
        try:
            response = await client.get("/readyz")
        except httpx.TimeoutException:
            raise AssertionError(
                f"/readyz hung for {HANG_S:.0f}s: it waited for the broker (request timeout"
                f" {REQUEST_TIMEOUT_MS // 1000}s) instead of its {READY_TIMEOUT_S}s bound"
            ) from None
    return response.status_code, response.json()["checks"]


async def _ready_checks(url: str) -> dict[str, Any] | None:
    status, checks = await _readyz(url)
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
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "KAFKA_REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS)}  # fmt: skip
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

        await gated_broker.gate.close()  # the broker drops off the network: refused
        assert await _readyz(url) == (503, {"database": True, "kafka": False})
        await gated_broker.gate.open()
        await eventually(lambda: _ready_checks(url), what="ready again", within=20)

        with _frozen(gated_broker):  # the broker is there but never answers
            assert await _readyz(url) == (503, {"database": True, "kafka": False})
        await eventually(lambda: _ready_checks(url), what="ready after the freeze", within=20)
