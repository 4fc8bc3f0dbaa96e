"""Who publishes a batch's changes: the consumer itself, and the relay loop only as a fallback."""

from __future__ import annotations

import gc
from datetime import datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.scorer.consumer import EventConsumer
from services.scorer.evaluation import Scoring
from services.scorer.metrics import scorer_metrics
from shared.clock import FixedClock
from shared.domain.rules import default_rules_path, load_rules
from shared.metrics import new_registry

NOW = datetime.fromisoformat("2026-03-01T00:00:00+00:00")
SCORING = Scoring(load_rules(default_rules_path()))


def consumer(wakes: list[str], publish: Any) -> EventConsumer:
    """An EventConsumer whose Kafka clients are never started (only its publishing runs)."""
    return EventConsumer(
        AIOKafkaConsumer(), AIOKafkaProducer(), None,  # type: ignore[arg-type]
        group_id="g", scoring=lambda: SCORING, clock=FixedClock(NOW),
        metrics=scorer_metrics(new_registry()), max_records=10, poll_timeout_ms=10,
        on_changes=lambda: wakes.append("relay loop"), publish=publish,
    )  # fmt: skip


async def test_a_published_batch_does_not_wake_the_relay_loop_as_well() -> None:
    wakes: list[str] = []
    published: list[str] = []

    async def publish() -> None:
        published.append("batch")

    await consumer(wakes, publish)._publish_now(publish)
    assert published == ["batch"]
    assert wakes == []


async def test_a_publish_locked_out_by_another_round_wakes_the_relay_loop() -> None:
    # That round may have read the outbox before this batch committed: the loop runs again.
    wakes: list[str] = []

    async def publish() -> bool:
        return False

    await consumer(wakes, publish)._publish_now(publish)
    assert wakes == ["relay loop"]


async def test_a_failed_publish_wakes_the_relay_loop_and_counts_a_relay_error() -> None:
    wakes: list[str] = []

    async def publish() -> None:
        raise ConnectionError("broker away")

    events = consumer(wakes, publish)
    await events._publish_now(publish)
    assert wakes == ["relay loop"]
    assert events.metrics.loop_errors.labels("relay")._value.get() == 1


@pytest.mark.parametrize("publishing", [True, False])
async def test_the_relay_loop_is_woken_for_changes_only_without_publish(publishing: bool) -> None:
    wakes: list[str] = []

    async def publish() -> None:
        pass

    events = consumer(wakes, publish if publishing else None)
    events._wake_relay_for(changes=3)
    events._wake_relay_for(changes=0)
    assert wakes == ([] if publishing else ["relay loop"])


async def test_a_step_polls_and_handles_with_the_collector_paused_and_resumes_it() -> None:
    seen: list[tuple[str, bool]] = []
    events = consumer([], None)

    async def poll() -> dict[Any, Any]:
        seen.append(("poll", gc.isenabled()))
        return {}

    events.poll = poll  # type: ignore[method-assign]
    assert gc.isenabled()
    assert await events.step() is False
    assert seen == [("poll", False)]
    assert gc.isenabled()


async def test_a_failing_step_still_resumes_the_collector() -> None:
    events = consumer([], None)

    async def poll() -> dict[Any, Any]:
        raise ConnectionError("broker away")

    events.poll = poll  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await events.step()
    assert gc.isenabled()
    assert events.needs_resync
