"""Actions metrics: labelled counters start at 0 (so increase() sees a first event), and every
send moves one, even when its outcome cannot be recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from services.actions import deliveries
from services.actions.channels import Channels, Delivery, DeliveryError
from services.actions.db import Pool
from services.actions.deliveries import Recorded
from services.actions.dispatcher import Dispatcher, DispatchPolicy
from services.actions.metrics import actions_metrics, prime_metrics
from shared.clock import FixedClock
from shared.domain.playbooks import default_playbooks_path, load_playbooks


def test_dead_letter_and_outcome_series_start_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = actions_metrics(registry)
    books = load_playbooks(default_playbooks_path())
    prime_metrics(metrics, playbooks=books, dlq_topics=["t.dlq"], loops=["consumer", "prune"])

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"tierstream_actions_{name}", labels)

    assert value("dead_letters_total", kind="step", channel="email") == 0
    assert value("dead_letters_total", kind="task", channel="webhook") == 0
    assert value("deliveries_total", kind="alert", channel="webhook", outcome="dead") == 0
    assert value("deliveries_total", kind="step", channel="email", outcome="unrecorded") == 0
    assert value("records_total", source="purchases", outcome="dead_lettered") == 0
    assert value("records_total", source="tier_changed", outcome="duplicate") == 0
    assert value("dlq_records_total", topic="t.dlq") == 0
    assert value("sequence_steps_total", sequence="win_back", outcome="failed") == 0
    assert value("actions_planned_total", kind="enrol", playbook="at_risk") == 0
    assert value("loop_errors_total", loop="prune") == 0
    assert value("pruned_rows_total", table="inbox") == 0
    # Only routes that exist: a task push never goes by e-mail.
    assert value("dead_letters_total", kind="task", channel="email") is None


class _Receiver:
    """A channel that accepts every message, or refuses every one."""

    def __init__(self, *, fails: bool) -> None:
        self.fails = fails

    async def send(self, delivery: Delivery) -> None:
        if self.fails:
            raise DeliveryError("receiver down")


@pytest.mark.parametrize("receiver_fails", [False, True])
async def test_a_send_whose_outcome_cannot_be_recorded_is_counted_as_unrecorded(
    monkeypatch: pytest.MonkeyPatch, receiver_fails: bool
) -> None:
    async def database_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("postgres went away")

    monkeypatch.setattr(deliveries, "record_sent", database_down)
    monkeypatch.setattr(deliveries, "record_failure", database_down)
    registry = CollectorRegistry()
    metrics = actions_metrics(registry)
    prime_metrics(
        metrics, playbooks=load_playbooks(default_playbooks_path()), dlq_topics=[], loops=[]
    )
    dispatcher = Dispatcher(
        "dispatcher", cast(Pool, None), Channels(log_channel=_Receiver(fails=receiver_fails)),
        kinds=["alert"], policy=DispatchPolicy(4, 1.0, 2.0, 3, 0.1, 0.2, 0.1),
        clock=FixedClock(datetime(2026, 5, 1, 8, tzinfo=UTC)), metrics=metrics,
    )  # fmt: skip
    delivery = Delivery(id=1, key="k-1", kind="alert", customer_id="c", channel="log",
                        recipient=None, subject="", body="hi", payload={})  # fmt: skip
    await dispatcher.deliver(delivery, 1)

    def outcome(name: str) -> float | None:
        labels = {"kind": "alert", "channel": "log", "outcome": name}
        return registry.get_sample_value("tierstream_actions_deliveries_total", labels)

    assert outcome("unrecorded") == 1
    assert (outcome("sent"), outcome("retry"), outcome("dead")) == (0, 0, 0)


class _Recorded:
    """record_sent as Postgres answers it: the first success applies, a later one does not."""

    def __init__(self) -> None:
        self.sent: set[int] = set()

    async def __call__(self, pool: object, delivery: Delivery, *, now: datetime) -> Recorded:
        applied = delivery.id not in self.sent
        self.sent.add(delivery.id)
        return Recorded(applied=applied)


async def test_a_send_counts_its_lateness_once_and_a_second_success_as_superseded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deliveries, "record_sent", _Recorded())
    registry = CollectorRegistry()
    metrics = actions_metrics(registry)
    now = datetime(2026, 5, 1, 8, tzinfo=UTC)
    dispatcher = Dispatcher(
        "dispatcher", cast(Pool, None), Channels(log_channel=_Receiver(fails=False)),
        kinds=["alert"], policy=DispatchPolicy(4, 1.0, 2.0, 3, 0.1, 0.2, 0.1),
        clock=FixedClock(now), metrics=metrics,
    )  # fmt: skip
    delivery = Delivery(id=1, key="k-1", kind="alert", customer_id="c", channel="log",
                        recipient=None, subject="", body="hi", payload={},
                        due_at=now - timedelta(minutes=3))  # fmt: skip
    await dispatcher.deliver(delivery, 1)
    await dispatcher.deliver(delivery, 2)  # the lease ran out during the first attempt

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"tierstream_actions_{name}", labels)

    outcomes = {"kind": "alert", "channel": "log"}
    assert sample("deliveries_total", **outcomes, outcome="sent") == 1
    assert sample("deliveries_total", **outcomes, outcome="superseded") == 1
    assert sample("delivery_lateness_seconds_count", kind="alert") == 1
    assert sample("delivery_lateness_seconds_sum", kind="alert") == 180
    assert sample("delivery_lateness_seconds_bucket", kind="alert", le="60.0") == 0
    assert sample("delivery_lateness_seconds_bucket", kind="alert", le="300.0") == 1


async def test_a_step_claimed_inside_its_quiet_hours_is_put_back_unsent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A retry, an expired lease or a backlog can bring a step due at 20:00 to 23:00.
    put_back: list[tuple[int, int, datetime]] = []

    async def defer(pool: object, delivery: Delivery, attempt: int, *, due_at: datetime) -> bool:
        put_back.append((delivery.id, attempt, due_at))
        return True

    monkeypatch.setattr(deliveries, "defer", defer)
    monkeypatch.setattr(deliveries, "record_sent", _Recorded())
    sent: list[int] = []

    class _Mailer:
        async def send(self, delivery: Delivery) -> None:
            sent.append(delivery.id)

    registry = CollectorRegistry()
    clock = FixedClock(datetime(2026, 5, 1, 23, tzinfo=UTC))
    dispatcher = Dispatcher(
        "scheduler", cast(Pool, None), Channels(log_channel=_Mailer()), kinds=["step"],
        policy=DispatchPolicy(4, 1.0, 2.0, 3, 0.1, 0.2, 0.1), clock=clock,
        metrics=actions_metrics(registry),
    )  # fmt: skip
    quiet = {"start": "21:00:00", "end": "08:00:00", "timezone": "UTC"}
    delivery = Delivery(id=7, key="k-7", kind="step", customer_id="c", channel="log",
                        recipient=None, subject="", body="hi",
                        payload={"sequence": "s", "quiet_hours": quiet},
                        due_at=datetime(2026, 5, 1, 20, tzinfo=UTC))  # fmt: skip
    await dispatcher.deliver(delivery, 3)
    assert (sent, put_back) == ([], [(7, 3, datetime(2026, 5, 2, 8, tzinfo=UTC))])
    labels = {"kind": "step", "channel": "log"}
    assert (
        registry.get_sample_value(
            "tierstream_actions_deliveries_total", {**labels, "outcome": "deferred"}
        )
        == 1
    )
    clock.set(datetime(2026, 5, 2, 8, tzinfo=UTC))
    await dispatcher.deliver(delivery, 4)
    assert sent == [7]
