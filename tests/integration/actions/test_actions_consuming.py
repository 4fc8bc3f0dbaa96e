"""Tier changes in, effects out: exactly one task per trigger, signed alerts, poison to the DLQ,
and a hanging webhook that blocks neither other deliveries nor the consumer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from structlog.testing import capture_logs

from shared.clock import FixedClock
from shared.domain.playbooks import default_playbooks_path
from shared.fenced_consumer import ANOTHER_LOG
from shared.topics import Topics
from tests.integration.actions.support import (
    AUTH,
    DAY,
    NOW,
    SECRET,
    WebhookReceiver,
    actions_settings,
    eventually,
    produce_changes,
    produce_raw,
    running_actions,
    serving,
    tier_change,
)
from tests.support.infra import recreate_topic


async def _get(url: str, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=5) as client:
        response = await client.get(path, params=params)
        response.raise_for_status()
        return response.json()


async def _items(url: str, path: str, **params: Any) -> list[Any]:
    items: list[Any] = (await _get(url, path, **params))["items"]
    return items


async def _metric(url: str, line_start: str) -> float | None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _dlq(bootstrap: str, topic: str, expect: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + 15
    try:
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return records


async def test_gold_change_delivered_twice_gives_one_task_one_signed_alert_and_one_enrolment(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock
) -> None:
    receiver = WebhookReceiver(SECRET.encode())
    async with serving(receiver):
        settings = actions_settings(
            base_env, webhook_url=f"{receiver.url}/alerts", webhook_secret=SECRET
        )
        async with running_actions(settings, clock) as url:
            gold = tier_change(
                "chg-1", "cust-1", "value_tier", "silver", "gold", email="cust-1@example.com"
            )
            topic = Topics(topic_namespace).tier_changed
            await produce_changes(kafka_bootstrap, topic_namespace, [gold])
            await produce_raw(kafka_bootstrap, topic, [(b"cust-x", b"{not json", [])])
            await produce_changes(kafka_bootstrap, topic_namespace, [gold])  # redelivered
            duplicates = (
                'tierstream_actions_records_total{outcome="duplicate",source="tier_changed"}'
            )
            assert await eventually(lambda: _metric(url, duplicates), what="the duplicate") == 1
            # Recorded once the answer is back: the receiver counts its success before.
            await eventually(lambda: _recorded_alerts(url, "cust-1"), what="the alert")

            tasks = (await _get(url, "/v1/tasks", customer_id="cust-1"))["items"]
            assert [
                (t["queue"], t["priority"], t["status"], t["tier_change_id"]) for t in tasks
            ] == [("senior-sales", "high", "open", "chg-1")]
            assert tasks[0]["due_at"] == (NOW + 2 * DAY).isoformat().replace("+00:00", "Z")

            alerts = (await _get(url, "/v1/alerts", customer_id="cust-1"))["items"]
            assert [(a["channel"], a["status"], a["attempts"]) for a in alerts] == [
                ("webhook", "sent", 1)
            ]
            [request] = receiver.requests
            assert request.signature_ok and request.key == alerts[0]["idempotency_key"]
            assert request.body["change"]["id"] == "chg-1" and "gold" in request.body["text"]
            assert request.body["audience"] == "vip"

            [enrolment] = (await _get(url, "/v1/sequences/enrollments", customer_id="cust-1"))[
                "items"
            ]
            assert (enrolment["sequence"], enrolment["status"]) == ("vip_welcome", "active")
            steps = [(s["name"], s["status"], s["channel"]) for s in enrolment["steps"]]
            assert steps[1] == ("check_in", "scheduled", "log")

            dlq = await _dlq(kafka_bootstrap, Topics.dlq(topic), expect=1)
            assert [r.value for r in dlq] == [b"{not json"]
            headers = dict(dlq[0].headers)
            assert headers["dlq_original_topic"] == topic.encode() and headers["dlq_error"]
            dead = f'tierstream_actions_dlq_records_total{{topic="{Topics.dlq(topic)}"}}'
            assert await _metric(url, dead) == 1
            planned = (
                'tierstream_actions_actions_planned_total{kind="task",playbook="gold_upgrade"}'
            )
            assert await _metric(url, planned) == 1
            primed = 'tierstream_actions_dead_letters_total{channel="email",kind="step"}'
            assert await _metric(url, primed) == 0  # present before the first dead letter
            consumer_errors = 'tierstream_actions_loop_errors_total{loop="consumer"}'
            assert await _metric(url, consumer_errors) == 0
            open_tasks = 'tierstream_actions_tasks_open{queue="senior-sales"}'
            assert await eventually(lambda: _metric(url, open_tasks), what="the gauge") == 1
            active = 'tierstream_actions_enrolments{sequence="vip_welcome",status="active"}'
            assert await eventually(lambda: _metric(url, active), what="the gauge") == 1


async def _async(value: Any) -> Any:
    return value


async def _recorded_alerts(url: str, customer_id: str) -> list[Any]:
    """The customer's alerts once each has an outcome recorded (none pending any more)."""
    alerts = await _items(url, "/v1/alerts", customer_id=customer_id)
    return alerts if alerts and all(a["status"] != "pending" for a in alerts) else []


async def test_the_tier_changed_topic_created_again_and_grown_past_the_offset_counts_the_skip(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock
) -> None:
    # Sought to the offset stored from the old log, actions read the new one from its middle:
    # its first tier changes were never acted on, and nothing said so.
    settings = actions_settings({**base_env, "TIERSTREAM_PARTITIONS": "1"})
    topic = Topics(topic_namespace).tier_changed
    skipped = f'tierstream_actions_offsets_skipped_total{{partition="0",topic="{topic}"}}'
    processed = 'tierstream_actions_records_total{outcome="processed",source="tier_changed"}'

    def changes(*numbers: int) -> list[Any]:
        return [tier_change(f"chg-{n}", f"cust-{n}", "value_tier", "silver", "gold")
                for n in numbers]  # fmt: skip

    async def counted(url: str, line: str, value: float) -> bool:
        return await _metric(url, line) == value

    async with running_actions(settings, clock) as url:
        await produce_changes(kafka_bootstrap, topic_namespace, changes(1, 2, 3))
        await eventually(lambda: counted(url, processed, 3), what="three changes")
    async with running_actions(settings, clock) as url:  # again on the same log
        await produce_changes(kafka_bootstrap, topic_namespace, changes(4))
        await eventually(lambda: counted(url, processed, 1), what="the fourth change")
        assert await _metric(url, skipped) == 0  # exported at 0, nothing skipped

    await recreate_topic(kafka_bootstrap, topic, 1)
    await produce_changes(kafka_bootstrap, topic_namespace, changes(*range(10, 16)))
    with capture_logs() as logs:
        async with running_actions(settings, clock) as url:
            await eventually(lambda: counted(url, skipped, 4), what="the skip counted")
            await eventually(lambda: counted(url, processed, 2), what="chg-14 and chg-15")
            acted_on = await _items(url, "/v1/tasks", customer_id="cust-15")
            skipped_over = await _items(url, "/v1/tasks", customer_id="cust-11")
    assert len(acted_on) == 1 and skipped_over == []  # chg-11: never acted on
    [line] = [e for e in logs if e["event"].startswith("records skipped")]
    assert line["event"] == "records skipped: the log does not hold the stored offset"
    assert (line["topic"], line["partition"], line["stored"], line["first"]) == (topic, 0, 4, 3)
    assert (line["skipped"], line["cause"]) == (4, ANOTHER_LOG)


async def test_a_second_trigger_refreshes_the_open_task_instead_of_duplicating_it(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock
) -> None:
    async with running_actions(actions_settings(base_env), clock) as url:
        first = tier_change("chg-a", "cust-2", "value_tier", "silver", "gold")
        await produce_changes(kafka_bootstrap, topic_namespace, [first])
        await eventually(lambda: _items(url, "/v1/tasks", customer_id="cust-2"), what="the task")
        clock.advance(DAY)
        down = tier_change("chg-b", "cust-2", "value_tier", "gold", "silver")
        again = tier_change("chg-c", "cust-2", "value_tier", "silver", "gold")
        await produce_changes(kafka_bootstrap, topic_namespace, [down, again])

        async def both() -> list[Any]:
            items = (await _get(url, "/v1/tasks", customer_id="cust-2"))["items"]
            return items if {t["tier_change_id"] for t in items} == {"chg-c", "chg-b"} else []

        tasks = await eventually(both, what="the refreshed task")
        by_playbook = {t["playbook"]: t for t in tasks}
        assert len(tasks) == 2 and set(by_playbook) == {"gold_upgrade", "gold_downgrade"}
        # The running SLA is kept: the refresh does not push the due time out.
        assert by_playbook["gold_upgrade"]["due_at"] == (NOW + 2 * DAY).isoformat().replace(
            "+00:00", "Z"
        )


async def test_a_template_failing_on_a_change_costs_only_its_action_not_the_exits(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock,
    tmp_path: Path,
) -> None:  # fmt: skip
    edited = tmp_path / "playbooks.yaml"
    edited.write_text(default_playbooks_path().read_text(encoding="utf-8").replace(
        'subject: "Customer {{ customer_id }} is at risk"',
        'subject: "{{ customer.segment.title() }} customer at risk"',
    ))  # fmt: skip
    async with running_actions(actions_settings(base_env, playbooks_file=edited), clock) as url:
        new = tier_change("chg-n", "cust-t", "lifecycle_stage", "lead", "new")
        risk = tier_change("chg-r", "cust-t", "lifecycle_stage", "new", "at_risk")
        odd = {"attributes": {"segment": 7}}  # the care alert's subject cannot render on it
        await produce_changes(kafka_bootstrap, topic_namespace, [new.model_copy(update=odd)])
        await eventually(lambda: _items(url, "/v1/sequences/enrollments", customer_id="cust-t"),
                         what="the welcome enrolment")  # fmt: skip
        clock.advance(DAY / 2)
        await produce_changes(kafka_bootstrap, topic_namespace, [risk.model_copy(update=odd)])
        tasks = await eventually(lambda: _items(url, "/v1/tasks", customer_id="cust-t"),
                                 what="the call-back task")  # fmt: skip
        assert [(t["playbook"], t["queue"], t["tier_change_id"]) for t in tasks] == [
            ("at_risk", "support", "chg-r")
        ]
        enrolments = await _items(url, "/v1/sequences/enrollments", customer_id="cust-t")
        assert sorted((e["sequence"], e["status"], e["exit_reason"]) for e in enrolments) == [
            ("welcome", "exited", "lifecycle_stage:at_risk"), ("win_back", "active", None),
        ]  # fmt: skip
        [welcome] = [e for e in enrolments if e["sequence"] == "welcome"]
        assert {s["status"] for s in welcome["steps"]} == {"cancelled"}
        assert await _items(url, "/v1/alerts", customer_id="cust-t") == []  # the one that failed
        failed = 'tierstream_actions_template_failures_total{kind="alert",playbook="at_risk"}'
        assert await eventually(lambda: _metric(url, failed), what="the count") == 1
        poison = 'tierstream_actions_records_total{outcome="dead_lettered",source="tier_changed"}'
        assert await _metric(url, poison) == 0


async def test_a_hanging_webhook_blocks_neither_other_deliveries_nor_the_consumer(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock
) -> None:
    receiver = WebhookReceiver(SECRET.encode(), hang_for={"slow-1"})
    async with serving(receiver):
        settings = actions_settings(
            base_env,
            webhook_url=f"{receiver.url}/alerts",
            webhook_secret=SECRET,
            # Long enough that the others' delivery (0.5 s with four CPU burners) never meets
            # it on a loaded machine: the checks below need them done while this one hangs.
            delivery_timeout_s=10.0,
            dispatch_concurrency=4,
        )
        async with running_actions(settings, clock) as url:
            slow = tier_change("chg-slow", "slow-1", "value_tier", "silver", "gold")
            await produce_changes(kafka_bootstrap, topic_namespace, [slow])
            await eventually(
                lambda: _async([r for r in receiver.requests if r.body["customer_id"] == "slow-1"]),
                what="the hanging request",
            )
            fast = [
                tier_change(f"chg-{i}", f"fast-{i}", "lifecycle_stage", "at_risk", "churned")
                for i in range(5)
            ]
            await produce_changes(kafka_bootstrap, topic_namespace, fast)
            await eventually(
                # Consumed, planned and sent well inside the hanging request's 10 s.
                lambda: _async(len(receiver.successes) == 5),
                within=9.5,
                what="the others",
            )
            [slow_alert] = await _items(url, "/v1/alerts", customer_id="slow-1")
            assert (slow_alert["attempts"], slow_alert["last_error"]) == (1, None)  # still hanging
            assert receiver.successes.keys() == {
                r.key for r in receiver.requests if r.body["customer_id"] != "slow-1"
            }

            async def timed_out() -> Any:
                items = (await _get(url, "/v1/alerts", customer_id="slow-1"))["items"]
                return items if items and items[0]["last_error"] else None

            [alert] = await timed_out_or_fail(timed_out)
            assert alert["status"] == "pending" and "no answer within 10 s" in alert["last_error"]


async def timed_out_or_fail(probe: Any) -> Any:
    return await eventually(probe, within=30, what="the timeout to be recorded")
