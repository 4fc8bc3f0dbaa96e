"""The dispatcher against a real HTTP receiver: retries with one idempotency key, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.actions import deliveries, queries, store
from services.actions.app import create_app
from services.actions.channels import Channels, Delivery, WebhookChannel
from services.actions.db import Pool, create_pool
from services.actions.dispatcher import Dispatcher, DispatchPolicy
from services.actions.effects import ChannelConfig, DeliveryRow
from services.actions.metrics import actions_metrics
from services.actions.queries import RequeueFilter
from services.actions.settings import ActionsSettings
from shared.clock import FixedClock
from tests.integration.actions.seeding import apply_changes
from tests.integration.actions.support import (
    AUTH,
    KEY,
    NOW,
    ROUNDS,
    SECRET,
    WebhookReceiver,
    eventually,
    fetch,
    serving,
    tier_change,
    wait_rounds,
)

WEBHOOK = ChannelConfig(webhook=True, email=False, crm=False)
POLICY = DispatchPolicy(concurrency=4, timeout_s=2.0, lease_s=3.0, max_attempts=3,
                        backoff_base_s=0.05, backoff_cap_s=0.2, interval_s=0.05)  # fmt: skip


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=4, application_name="test")
    yield pool
    await pool.close()


async def _dispatch_until(
    pool: Pool, receiver: WebhookReceiver, secret: bytes, registry: CollectorRegistry,
    done: str, database_url: str,
) -> None:  # fmt: skip
    """Run an alert dispatcher against the receiver until the alert's status is `done`."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=2) as client:
        channels = Channels(webhook=WebhookChannel(client, receiver.url + "/alerts", secret))
        metrics = actions_metrics(registry)
        dispatcher = Dispatcher("dispatcher", pool, channels, kinds=("alert",), policy=POLICY,
                                clock=FixedClock(NOW), metrics=metrics)  # fmt: skip
        task = asyncio.create_task(dispatcher.run(stop))

        async def rounds() -> float:
            count = registry.get_sample_value(ROUNDS, {"sender": "dispatcher"})
            assert count is not None, f"{ROUNDS} is not exported"
            return count

        try:
            sql = "SELECT 1 FROM actions.delivery WHERE kind = 'alert' AND status = $1"
            await eventually(lambda: fetch(database_url, sql, done), within=10, what=done)
            # At least one more whole claim round: nothing else may be claimed. Stopping then
            # waits for whatever was claimed to be sent, so the receiver has seen it.
            await wait_rounds(rounds)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def _alert(database_url: str) -> dict[str, object]:
    [row] = await fetch(database_url, "SELECT status, attempts, last_error, idempotency_key,"
                        " sent_at FROM actions.delivery WHERE kind = 'alert'")  # fmt: skip
    return row


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_a_receiver_failing_twice_gets_the_same_key_three_times_and_one_success(
    pool: Pool, actions_db: str
) -> None:
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=WEBHOOK)  # fmt: skip
    registry = CollectorRegistry()
    receiver = WebhookReceiver(SECRET.encode(), fail_first=2)
    async with serving(receiver):
        await _dispatch_until(pool, receiver, SECRET.encode(), registry, "sent", actions_db)
    alert = await _alert(actions_db)
    assert [r.status for r in receiver.requests] == [503, 503, 200]
    assert {r.key for r in receiver.requests} == {alert["idempotency_key"]}
    assert all(r.signature_ok for r in receiver.requests)
    assert receiver.successes == {alert["idempotency_key"]: 1}
    assert (alert["status"], alert["attempts"], alert["last_error"]) == ("sent", 3, None)
    assert alert["sent_at"] == NOW
    total = "tierstream_actions_deliveries_total"
    assert _value(registry, total, kind="alert", channel="webhook", outcome="retry") == 2
    assert _value(registry, total, kind="alert", channel="webhook", outcome="sent") == 1


async def test_a_delivery_is_dead_lettered_after_max_attempts_with_the_last_error(
    pool: Pool, actions_db: str
) -> None:
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=WEBHOOK)  # fmt: skip
    registry = CollectorRegistry()
    receiver = WebhookReceiver(SECRET.encode(), fail_first=100)
    async with serving(receiver):
        await _dispatch_until(pool, receiver, SECRET.encode(), registry, "dead", actions_db)
    alert = await _alert(actions_db)
    assert len(receiver.requests) == POLICY.max_attempts == alert["attempts"]
    assert alert["status"] == "dead" and str(alert["last_error"]).startswith("HTTP 503")
    dead = "tierstream_actions_dead_letters_total"
    assert _value(registry, dead, kind="alert", channel="webhook") == 1


async def test_a_rejected_signature_is_not_retried(pool: Pool, actions_db: str) -> None:
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=WEBHOOK)  # fmt: skip
    receiver = WebhookReceiver(SECRET.encode())
    async with serving(receiver):
        await _dispatch_until(
            pool, receiver, b"wrong-secret", CollectorRegistry(), "dead", actions_db
        )
    alert = await _alert(actions_db)
    assert [(r.status, r.signature_ok) for r in receiver.requests] == [(401, False)]
    assert alert["attempts"] == 1 and str(alert["last_error"]).startswith("HTTP 401")


async def test_dead_alerts_are_sent_again_once_requeued_with_the_same_key(
    pool: Pool, actions_db: str
) -> None:
    # A rotated secret dead-letters every alert at once (a 401 is not retried): once it is
    # fixed, the operator had no way to send them again.
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold"),
                               tier_change("c2", "other", "value_tier", "silver", "gold")],
                        now=NOW, channels=WEBHOOK)  # fmt: skip
    receiver = WebhookReceiver(SECRET.encode())
    async with serving(receiver):
        await _dispatch_until(pool, receiver, b"old-secret", CollectorRegistry(), "dead",
                              actions_db)  # fmt: skip
        went_out = "UPDATE actions.delivery SET sent_at = $1 WHERE customer_id = 'other'"
        await fetch(actions_db, went_out, NOW)  # an earlier attempt got through after all
        settings = ActionsSettings(database_url=actions_db, api_keys=f"test:{KEY}")
        app = create_app(settings, pool=pool, clock=FixedClock(NOW))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a",
                                     headers=AUTH) as api:  # fmt: skip
            empty_window = {"kind": "alert", "created_from": "2026-03-02T00:00:00Z",
                            "created_until": "2026-03-01T00:00:00Z"}  # fmt: skip
            for bad in ({"kind": "step"}, {"kind": "alert", "created_from": 1422858},
                        empty_window):  # fmt: skip
                refused = await api.post("/v1/deliveries/requeue", json=bad)
                assert refused.status_code == 422, (bad, refused.text)
            [error] = refused.json()["errors"]  # the empty window's (it answered 200)
            assert error["field"] == "created_until", error
            answer = await api.post("/v1/deliveries/requeue",
                                    json={"kind": "alert", "channel": "webhook"})  # fmt: skip
        assert answer.status_code == 200 and answer.json() == {"requeued": 1}
        await _dispatch_until(pool, receiver, SECRET.encode(), CollectorRegistry(), "sent",
                              actions_db)  # fmt: skip
    sql = ("SELECT customer_id, status, attempts, idempotency_key FROM actions.delivery"
           " WHERE kind = 'alert' ORDER BY customer_id")  # fmt: skip
    rows = await fetch(actions_db, sql)
    assert [(r["customer_id"], r["status"], r["attempts"]) for r in rows] == [
        ("other", "dead", 1), ("vip", "sent", 1),
    ]  # fmt: skip
    sent = [r for r in receiver.requests if r.status == 200]
    assert [r.key for r in sent] == [rows[1]["idempotency_key"]]


async def test_the_push_of_a_task_finished_meanwhile_is_not_requeued(
    pool: Pool, actions_db: str
) -> None:
    # Sent again, the snapshot it carries would open work in the CRM that is already done.
    crm = ChannelConfig(webhook=False, email=False, crm=True)
    changes = [tier_change(f"g{i}", f"vip{i}", "value_tier", "silver", "gold") for i in (1, 2)]
    await apply_changes(pool, changes, now=NOW, channels=crm)
    await fetch(actions_db, "UPDATE actions.delivery SET status = 'dead' WHERE kind = 'task'")
    done = "status = 'done', updated_at = updated_at + interval '1 hour'"  # as the API does
    await fetch(actions_db, f"UPDATE actions.task SET {done} WHERE customer_id = 'vip1'")
    async with pool.acquire() as conn:
        assert await queries.requeue_dead(conn, RequeueFilter("task")) == 1
    rows = await fetch(actions_db, "SELECT customer_id, status FROM actions.delivery"
                       " WHERE kind = 'task' ORDER BY customer_id")  # fmt: skip
    assert [(r["customer_id"], r["status"]) for r in rows] == [
        ("vip1", "dead"), ("vip2", "pending"),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def _dispatching(
    pool: Pool, slack: WebhookReceiver, crm: WebhookReceiver, policy: DispatchPolicy,
    *, released: asyncio.Event | None = None,
) -> AsyncIterator[Dispatcher]:  # fmt: skip
    """A dispatcher of alerts (to `slack`) and task pushes (to `crm`), running inside the
    block; `released` is set as it stops (a hanging receiver lets its requests go)."""
    stop = asyncio.Event()
    async with serving(crm), serving(slack), httpx.AsyncClient(timeout=policy.timeout_s) as client:
        channels = Channels(
            webhook=WebhookChannel(client, slack.url + "/slack", SECRET.encode()),
            crm=WebhookChannel(client, crm.url + "/crm", SECRET.encode()),
        )
        dispatcher = Dispatcher("dispatcher", pool, channels, kinds=("alert", "task"),
                                policy=policy, clock=FixedClock(NOW),
                                metrics=actions_metrics(CollectorRegistry()))  # fmt: skip
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            yield dispatcher
        finally:
            stop.set()
            if released is not None:
                released.set()
            await asyncio.wait_for(task, 10)


async def test_customer_data_cannot_write_slack_markup_in_the_alert_or_the_crm_push(
    pool: Pool, actions_db: str
) -> None:
    # The alert had the id escaped, the CRM push sent it raw in its `text`: where the CRM
    # URL is a Slack-compatible hook, it pinged @channel and posted the link.
    customer = "<!channel> *pwn* <https://evil.example|click>"
    both = ChannelConfig(webhook=True, email=False, crm=True)
    await apply_changes(pool, [tier_change("g1", customer, "value_tier", "silver", "gold")],
                        now=NOW, channels=both)  # fmt: skip
    slack, crm = WebhookReceiver(SECRET.encode()), WebhookReceiver(SECRET.encode())
    async with _dispatching(pool, slack, crm, POLICY):
        sql = "SELECT 1 FROM actions.delivery WHERE kind <> 'step' AND status <> 'sent'"
        await eventually(lambda: _none(actions_db, sql), within=10, what="both sent")
    [alert], [push] = [r.body for r in slack.requests], [r.body for r in crm.requests]
    escaped = "&lt;!channel&gt; *pwn* &lt;https://evil.example|click&gt;"
    for text in (alert["text"], push["text"]):
        assert escaped in text and "<!" not in text and "<https" not in text
    assert push["text"] == f"Senior account manager: welcome gold customer {escaped}"
    assert push["task"]["title"].endswith(customer)  # the structured fields keep the data
    assert push["customer_id"] == alert["customer_id"] == customer


async def _none(database_url: str, sql: str) -> bool:
    return not await fetch(database_url, sql)


async def _claim_alert(pool: Pool, lease_s: float) -> list[tuple[Delivery, int]]:
    return await deliveries.claim_due(pool, ("alert",), now=NOW, limit=1, lease_s=lease_s)


async def _two_attempts(pool: Pool) -> tuple[Delivery, Delivery]:
    """A VIP alert claimed twice: the first attempt's lease ran out while it still waited."""
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=WEBHOOK)  # fmt: skip
    [(late, first)] = await _claim_alert(pool, 0.05)
    await asyncio.sleep(0.2)
    [(current, second)] = await _claim_alert(pool, 60)
    assert (first, second) == (1, 2)
    return late, current


async def test_a_failure_reported_after_its_lease_ran_out_leaves_the_newer_attempt_alone(
    pool: Pool, actions_db: str
) -> None:
    late, current = await _two_attempts(pool)

    for retry_in_s in (0.0, None):  # neither a retry nor a dead letter from the late attempt
        outcome = await deliveries.record_failure(
            pool, late, "no answer", retry_in_s=retry_in_s, now=NOW
        )
        assert not outcome.applied
    assert await _claim_alert(pool, 60) == []  # still leased to the second attempt
    alert = await _alert(actions_db)
    assert (alert["status"], alert["attempts"], alert["last_error"]) == ("pending", 2, None)

    outcome = await deliveries.record_failure(pool, current, "HTTP 503", retry_in_s=0.0,
                                              now=NOW)  # fmt: skip
    assert outcome.applied
    [(_, third)] = await _claim_alert(pool, 60)
    assert third == 3 and (await _alert(actions_db))["last_error"] == "HTTP 503"


async def test_a_failure_reported_after_a_newer_attempt_was_deferred_leaves_the_step_alone(
    pool: Pool, actions_db: str
) -> None:
    # Deferring gives a claim back (attempts - 1), so the count came back to the late
    # attempt's number and its failure dead-lettered the deferred alert, unsent.
    late, current = await _two_attempts(pool)
    assert await deliveries.defer(pool, current, due_at=NOW + timedelta(hours=8))
    outcome = await deliveries.record_failure(pool, late, "no answer", retry_in_s=None, now=NOW)
    assert not outcome.applied
    alert = await _alert(actions_db)
    assert (alert["status"], alert["attempts"], alert["last_error"]) == ("pending", 1, None)


def _push(key: str, kind: str, customer_id: str, due_in_s: float) -> DeliveryRow:
    return DeliveryRow(key=key, kind=kind, customer_id=customer_id, tier_change_id=f"tc-{key}",
                       playbook="vip", audience="care", channel="webhook", recipient=None,
                       subject="s", body="b", payload={},
                       due_at=NOW + timedelta(seconds=due_in_s))  # fmt: skip


async def test_a_hanging_receiver_never_holds_the_slots_another_receiver_needs(
    pool: Pool, actions_db: str
) -> None:
    # Twelve task pushes to a CRM that never answers, due before one alert to a working
    # webhook. Before, the pushes took every slot, and each came back after its back-off
    # ahead of the alert: the alert waited till the pushes were dead-lettered.
    rows = [_push(f"push-{i}", "task", f"crm-{i}", -60 + i) for i in range(12)]
    rows.append(_push("alert-1", "alert", "vip", 0))
    async with pool.acquire() as conn:
        await store.insert_deliveries(conn, rows, now=NOW)
    crm = WebhookReceiver(SECRET.encode(), hang_for={f"crm-{i}" for i in range(12)})
    slack = WebhookReceiver(SECRET.encode())
    policy = replace(POLICY, timeout_s=60.0, lease_s=70.0)  # no push ends during the test
    async with _dispatching(pool, slack, crm, policy, released=crm.released) as dispatcher:
        sql = "SELECT 1 FROM actions.delivery WHERE kind = 'alert' AND status = 'sent'"
        await eventually(lambda: fetch(actions_db, sql), within=20, what="alert sent")
        hanging = len(crm.requests)
    assert [r.status for r in slack.requests] == [200]
    # All but a quarter of the slots (4) went to the pushes, none of which has ended.
    assert hanging == dispatcher.route_slots == 3
