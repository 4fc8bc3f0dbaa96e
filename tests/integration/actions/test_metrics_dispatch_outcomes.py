"""Dispatcher outcome metrics against real deliveries: every send moves exactly one
`deliveries_total` series (sent, unconfirmed, retry, dead, superseded, deferred or unrecorded),
matching what
Postgres recorded, with real delivery rows, a real webhook receiver and a real SMTP server."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.actions import deliveries, queries
from services.actions import store as actions_store
from services.actions.batch import GoalHit, PlannedChange, apply_batch
from services.actions.channels import Channels, Delivery, SmtpChannel, SmtpConfig, WebhookChannel
from services.actions.db import Pool, create_pool
from services.actions.dispatcher import Dispatcher, DispatchPolicy
from services.actions.effects import ChannelConfig, DeliveryRow
from services.actions.metrics import actions_metrics, prime_metrics
from shared.clock import FixedClock
from shared.domain.playbooks import (
    Playbooks,
    default_playbooks_path,
    load_playbooks,
    plan_actions,
)
from tests.faults.outages import cut_off_database
from tests.integration.actions.seeding import LOG_ONLY as LOG
from tests.integration.actions.seeding import apply_changes
from tests.integration.actions.support import (
    DAY,
    NOW,
    SECRET,
    WebhookReceiver,
    eventually,
    fetch,
    serving,
    smtp_server,
    tier_change,
)

WEBHOOK = ChannelConfig(webhook=True, email=False, crm=False)
EMAIL = ChannelConfig(webhook=False, email=True, crm=False)
POLICY = DispatchPolicy(concurrency=4, timeout_s=5.0, lease_s=60.0, max_attempts=3,
                        backoff_base_s=0.05, backoff_cap_s=0.2, interval_s=0.05)  # fmt: skip
APP = "metrics-test"
TOTAL = "tierstream_actions_deliveries_total"
OUTCOMES = ("sent", "unconfirmed", "retry", "dead", "superseded", "deferred", "unrecorded")


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=4, application_name=APP)
    yield pool
    await pool.close()


def _dispatcher(
    pool: Pool, channels: Channels, registry: CollectorRegistry, *, kinds: tuple[str, ...],
    clock: FixedClock, policy: DispatchPolicy = POLICY,
) -> Dispatcher:  # fmt: skip
    metrics = actions_metrics(registry)
    prime_metrics(
        metrics, playbooks=load_playbooks(default_playbooks_path()), dlq_topics=[], loops=[]
    )
    return Dispatcher("dispatcher", pool, channels, kinds=kinds, policy=policy, clock=clock,
                      metrics=metrics)  # fmt: skip


def _outcomes(registry: CollectorRegistry, kind: str, channel: str) -> dict[str, float]:
    """The non-zero `deliveries_total` series of one route."""
    found = {
        name: registry.get_sample_value(TOTAL, {"kind": kind, "channel": channel, "outcome": name})
        for name in OUTCOMES
    }
    return {name: value for name, value in found.items() if value}


def _steps(registry: CollectorRegistry, sequence: str) -> dict[str, float]:
    """The non-zero `sequence_steps_total` series of one sequence."""
    found = {
        name: registry.get_sample_value(
            "tierstream_actions_sequence_steps_total", {"sequence": sequence, "outcome": name}
        )
        for name in ("sent", "cancelled", "failed")
    }
    return {name: value for name, value in found.items() if value}


async def _claim(
    pool: Pool, kind: str, *, at: FixedClock, lease_s: float = 60.0
) -> list[tuple[Delivery, int]]:
    return await deliveries.claim_due(pool, (kind,), now=at.now(), limit=10, lease_s=lease_s)


async def _alert(database_url: str) -> dict[str, object]:
    [row] = await fetch(database_url, "SELECT status, attempts, last_error, sent_at"
                        " FROM actions.delivery WHERE kind = 'alert'")  # fmt: skip
    return row


async def _seed_alert(pool: Pool) -> None:
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=WEBHOOK)  # fmt: skip


def _quiet_playbooks(folder: Path) -> Playbooks:
    """The default playbooks with the welcome sequence quiet from 21:00 to 08:00 UTC."""
    quiet = 'quiet_hours: {start: "21:00", end: "08:00", timezone: UTC}\n    reentry: never'
    edited = folder / "playbooks.yaml"
    text = default_playbooks_path().read_text(encoding="utf-8")
    edited.write_text(text.replace("reentry: never", quiet, 1), encoding="utf-8")
    return load_playbooks(edited)


async def _enrol_newbie(
    pool: Pool, books: Playbooks, *, channels: ChannelConfig = EMAIL,
    email: str | None = "newbie@example.com",
) -> None:  # fmt: skip
    """Customer "newbie" (with an e-mail) becomes new: enrolled in welcome, steps by e-mail
    (planned for the log when `channels` has no e-mail)."""
    change = tier_change("chg-new", "newbie", "lifecycle_stage", "lead", "new", email=email)
    await apply_batch(pool, [PlannedChange(change, plan_actions(change, books))], [], [],
                      group_id="seed", playbooks=books, channels=channels, now=NOW)  # fmt: skip


def _webhook(client: httpx.AsyncClient, receiver: WebhookReceiver) -> Channels:
    return Channels(webhook=WebhookChannel(client, receiver.url + "/alerts", SECRET.encode()))


async def test_a_late_send_counts_its_lateness_once_and_a_second_success_as_superseded(
    pool: Pool, actions_db: str
) -> None:
    await _seed_alert(pool)  # due at NOW
    clock = FixedClock(NOW + timedelta(minutes=3))
    registry = CollectorRegistry()
    receiver = WebhookReceiver(SECRET.encode())
    async with serving(receiver), httpx.AsyncClient(timeout=5) as client:
        dispatcher = _dispatcher(pool, _webhook(client, receiver), registry, kinds=("alert",),
                                 clock=clock)  # fmt: skip
        # The first attempt's lease runs out (0 s) before it is sent: a second one claims it.
        [(first, one)] = await _claim(pool, "alert", at=clock, lease_s=0)
        [(second, two)] = await _claim(pool, "alert", at=clock)
        assert (one, two) == (1, 2)
        await dispatcher.deliver(first, one)
        await dispatcher.deliver(second, two)
    assert list(receiver.successes.values()) == [2]  # the receiver got the same key twice
    alert = await _alert(actions_db)
    assert (alert["status"], alert["sent_at"]) == ("sent", clock.now())
    assert _outcomes(registry, "alert", "webhook") == {"sent": 1, "superseded": 1}

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"tierstream_actions_{name}", labels)

    assert sample("delivery_lateness_seconds_count", kind="alert") == 1
    assert sample("delivery_lateness_seconds_sum", kind="alert") == 180
    assert sample("delivery_lateness_seconds_bucket", kind="alert", le="60.0") == 0
    assert sample("delivery_lateness_seconds_bucket", kind="alert", le="300.0") == 1


@pytest.mark.parametrize(
    ("max_attempts", "outcome", "status"), [(3, "retry", "pending"), (1, "dead", "dead")]
)
async def test_a_refused_send_counts_a_retry_or_at_the_last_attempt_a_dead_letter(
    pool: Pool, actions_db: str, max_attempts: int, outcome: str, status: str
) -> None:
    await _seed_alert(pool)
    clock = FixedClock(NOW)
    registry = CollectorRegistry()
    policy = replace(POLICY, max_attempts=max_attempts)
    receiver = WebhookReceiver(SECRET.encode(), fail_first=100)  # 503 to every attempt
    async with serving(receiver), httpx.AsyncClient(timeout=5) as client:
        dispatcher = _dispatcher(pool, _webhook(client, receiver), registry, kinds=("alert",),
                                 clock=clock, policy=policy)  # fmt: skip
        [(delivery, attempt)] = await _claim(pool, "alert", at=clock)
        await dispatcher.deliver(delivery, attempt)
    assert [r.status for r in receiver.requests] == [503]
    alert = await _alert(actions_db)
    assert (alert["status"], alert["attempts"]) == (status, 1)
    assert str(alert["last_error"]).startswith("HTTP 503")
    assert _outcomes(registry, "alert", "webhook") == {outcome: 1}
    dead = registry.get_sample_value(
        "tierstream_actions_dead_letters_total", {"kind": "alert", "channel": "webhook"}
    )
    assert dead == (1 if outcome == "dead" else 0)


@pytest.mark.parametrize(
    ("reply", "outcome", "status"),
    [
        ("450 4.2.0 <{address}>: greylisted, try again later", "retry", "pending"),
        ("452 4.2.2 <{address}>: mailbox full", "retry", "pending"),
        ("550 5.1.1 <{address}>: no such mailbox", "dead", "dead"),
    ],
    ids=["greylisted", "full", "unknown"],
)
async def test_a_recipient_refused_for_now_is_retried_for_good_dead_lettered_and_never_logged(
    pool: Pool, actions_db: str, reply: str, outcome: str, status: str
) -> None:
    await _seed_email_alert(pool, recipient="Carol <Carol@Example.com>")
    clock, registry = FixedClock(NOW), CollectorRegistry()
    with smtp_server(rcpt_reply=reply) as (port, mailbox), capture_logs() as logs:
        mail = SmtpChannel(SmtpConfig("127.0.0.1", port, "actions@example.com", timeout_s=5))
        dispatcher = _dispatcher(pool, Channels(email=mail), registry, kinds=("alert",),
                                 clock=clock)  # fmt: skip
        [(delivery, attempt)] = await _claim(pool, "alert", at=clock)
        await dispatcher.deliver(delivery, attempt)
    assert mailbox == []
    alert = await _alert(actions_db)
    assert (alert["status"], alert["attempts"]) == (status, 1)
    assert _outcomes(registry, "alert", "email") == {outcome: 1}
    # The server's reason, without the customer's address (it is logged: SECURITY.md).
    code = reply.split()[0]
    assert (
        alert["last_error"]
        == f"recipient refused: SMTP {code}: {reply[4:].format(address='<recipient>')}"
    )
    assert logs and not [line for line in logs if "example.com" in str(line).lower()]


async def _seed_email_alert(pool: Pool, recipient: str = "carol@example.com") -> None:
    """One e-mail alert, due now."""
    email = DeliveryRow(key="k1", kind="alert", customer_id="c1", tier_change_id="t1",
                        playbook="vip", audience="care", channel="email", recipient=recipient,
                        subject="s", body="b", payload={}, due_at=NOW)  # fmt: skip
    async with pool.acquire() as conn:
        await actions_store.insert_deliveries(conn, [email], now=NOW)


@pytest.mark.parametrize(
    ("smtp_timeout_s", "dispatch_timeout_s"),
    [(0.5, 5.0), (5.0, 0.5)],
    ids=["smtp-client-timeout", "dispatcher-timeout"],
)
async def test_an_email_the_server_took_but_never_confirmed_is_recorded_sent_and_not_resent(
    pool: Pool, actions_db: str, smtp_timeout_s: float, dispatch_timeout_s: float
) -> None:
    """The server keeps the message but answers it after the timeout, the SMTP client's or
    the dispatcher's: a retry would put a second copy in the inbox."""
    await _seed_email_alert(pool)
    clock, registry = FixedClock(NOW), CollectorRegistry()
    policy = replace(POLICY, timeout_s=dispatch_timeout_s)
    with smtp_server(delay_s=1.5) as (port, mailbox), capture_logs() as logs:
        config = SmtpConfig("127.0.0.1", port, "actions@example.com", timeout_s=smtp_timeout_s)
        dispatcher = _dispatcher(pool, Channels(email=SmtpChannel(config)), registry,
                                 kinds=("alert",), clock=clock, policy=policy)  # fmt: skip
        [(delivery, attempt)] = await _claim(pool, "alert", at=clock)
        await dispatcher.deliver(delivery, attempt)
        assert await _claim(pool, "alert", at=FixedClock(NOW + DAY)) == []
        await eventually(lambda: _one(mailbox), within=10, what="the server kept the message")
    alert = await _alert(actions_db)
    assert (alert["status"], alert["attempts"], alert["sent_at"]) == ("sent", 1, NOW)
    assert str(alert["last_error"]).startswith("unconfirmed: the server has the message"), alert
    assert _outcomes(registry, "alert", "email") == {"unconfirmed": 1}
    assert [line["event"] for line in logs if line["log_level"] == "warning"] == [
        "delivery handed over, unconfirmed; not resent"
    ]


async def _one(mailbox: list[object]) -> bool:
    return len(mailbox) == 1


async def test_an_email_whose_server_timed_out_before_the_message_is_retried(
    pool: Pool, actions_db: str
) -> None:
    """A server slow to accept the recipient never had the message: the send is retried."""
    await _seed_email_alert(pool)
    clock, registry = FixedClock(NOW), CollectorRegistry()
    with smtp_server(rcpt_delay_s=1.5) as (port, mailbox):
        config = SmtpConfig("127.0.0.1", port, "actions@example.com", timeout_s=0.5)
        dispatcher = _dispatcher(pool, Channels(email=SmtpChannel(config)), registry,
                                 kinds=("alert",), clock=clock)  # fmt: skip
        [(delivery, attempt)] = await _claim(pool, "alert", at=clock)
        await dispatcher.deliver(delivery, attempt)
    assert mailbox == []
    alert = await _alert(actions_db)
    assert (alert["status"], alert["attempts"], alert["sent_at"]) == ("pending", 1, None)
    assert "SMTPReadTimeoutError" in str(alert["last_error"]), alert
    assert _outcomes(registry, "alert", "email") == {"retry": 1}


@pytest.mark.parametrize("receiver_fails", [False, True])
async def test_a_send_whose_outcome_cannot_be_recorded_is_counted_as_unrecorded(
    pool: Pool, actions_db: str, receiver_fails: bool
) -> None:
    await _seed_alert(pool)
    clock = FixedClock(NOW)
    registry = CollectorRegistry()
    receiver = WebhookReceiver(SECRET.encode(), fail_first=100 if receiver_fails else 0)
    async with serving(receiver), httpx.AsyncClient(timeout=5) as client:
        dispatcher = _dispatcher(pool, _webhook(client, receiver), registry, kinds=("alert",),
                                 clock=clock)  # fmt: skip
        [(delivery, attempt)] = await _claim(pool, "alert", at=clock)
        # Postgres goes away between the claim and the outcome: its connections are ended and
        # new ones refused, so recording the send (or its failure) fails for real.
        ended = await cut_off_database(actions_db, allow=False, application_name=APP)
        assert ended >= 1, "the pool had no connection to end"
        try:
            await dispatcher.deliver(delivery, attempt)
        finally:
            await cut_off_database(actions_db, allow=True, application_name=APP)
    assert [r.status for r in receiver.requests] == [503 if receiver_fails else 200]
    alert = await _alert(actions_db)  # nothing recorded: the lease will send it again
    assert (alert["status"], alert["attempts"], alert["last_error"]) == ("pending", 1, None)
    assert _outcomes(registry, "alert", "webhook") == {"unrecorded": 1}
    assert (
        registry.get_sample_value(TOTAL, {"kind": "alert", "channel": "webhook", "outcome": "sent"})
        == 0
    )


async def test_a_step_claimed_inside_its_quiet_hours_is_put_back_unsent(
    pool: Pool, actions_db: str, tmp_path: Path
) -> None:
    # Quiet 21:00-08:00 UTC. The welcome sequence's day-1 step is due at 10:00, outside them;
    # a retry, an expired lease or a backlog brings it to the scheduler at 23:00 instead.
    await _enrol_newbie(pool, _quiet_playbooks(tmp_path))
    first_due = NOW + DAY  # 10:00
    clock = FixedClock(first_due + timedelta(hours=13))  # 23:00
    registry = CollectorRegistry()
    with smtp_server() as (port, mailbox):
        mail = SmtpChannel(SmtpConfig("127.0.0.1", port, "actions@example.com", timeout_s=5))
        dispatcher = _dispatcher(pool, Channels(email=mail), registry, kinds=("step",),
                                 clock=clock)  # fmt: skip
        [(step, attempt)] = await _claim(pool, "step", at=clock)
        assert step.due_at == first_due and attempt == 1
        await dispatcher.deliver(step, attempt)
        assert mailbox == []
        morning = first_due + timedelta(hours=22)  # 08:00 the next day
        sql = "SELECT status, attempts, due_at FROM actions.delivery WHERE id = $1"
        assert await fetch(actions_db, sql, step.id) == [
            {"status": "pending", "attempts": 0, "due_at": morning}
        ]
        assert _outcomes(registry, "step", "email") == {"deferred": 1}
        assert await _claim(pool, "step", at=clock) == []  # not due again before 08:00

        clock.set(morning)
        [(again, attempt)] = await _claim(pool, "step", at=clock)
        assert (again.id, attempt) == (step.id, 1)
        await dispatcher.deliver(again, attempt)
        assert len(mailbox) == 1
    assert await fetch(actions_db, sql, step.id) == [
        {"status": "sent", "attempts": 1, "due_at": morning}
    ]
    assert _outcomes(registry, "step", "email") == {"deferred": 1, "sent": 1}


async def test_a_step_whose_stored_quiet_hours_cannot_be_read_is_dead_lettered_and_counted(
    pool: Pool, actions_db: str, tmp_path: Path
) -> None:
    # The check raised out of the send task: nothing counted, nothing logged, the step
    # claimed again every lease for ever and the enrolment's later steps held behind it.
    await _enrol_newbie(pool, _quiet_playbooks(tmp_path))
    async with pool.acquire() as conn:  # a zone a later image's tzdata no longer has
        await conn.execute("UPDATE actions.delivery SET payload = jsonb_set(payload,"
                           " '{quiet_hours,timezone}', '\"Gone/Away\"')")  # fmt: skip
    clock = FixedClock(NOW + 2 * DAY)
    registry = CollectorRegistry()
    dispatcher = _dispatcher(pool, Channels(), registry, kinds=("step",), clock=clock)
    [(step, attempt)] = await _claim(pool, "step", at=clock)
    await dispatcher.deliver(step, attempt)
    [row] = await fetch(actions_db, "SELECT status, last_error FROM actions.delivery"
                        " WHERE id = $1", step.id)  # fmt: skip
    assert row["status"] == "dead" and "quiet hours cannot be read" in row["last_error"], row
    assert _outcomes(registry, "step", "email") == {"dead": 1}
    assert _steps(registry, "welcome") == {"failed": 1}
    [(following, _)] = await _claim(pool, "step", at=FixedClock(NOW + 30 * DAY))
    assert following.id != step.id  # the enrolment's next step is no longer held


async def test_an_enrolments_due_steps_go_out_one_at_a_time_in_order(
    pool: Pool, actions_db: str
) -> None:
    # Every step of the welcome sequence is due at once (the service was down for a month):
    # before, one claim took them all, sent at once in any order; then, one at a time, they
    # still went out moments apart. The first goes out now, and each later one as long after
    # the one before it as the sequence says.
    books = load_playbooks(default_playbooks_path())
    await _enrol_newbie(pool, books)
    clock = FixedClock(NOW + 30 * DAY)
    names = {row["id"]: row["step_name"] for row in await fetch(
        actions_db, "SELECT id, step_name FROM actions.delivery WHERE kind = 'step'")}  # fmt: skip
    sent: list[tuple[str, datetime]] = []
    while claimed := await _claim(pool, "step", at=clock):
        [(step, _)] = claimed  # one of the enrolment's steps at a time
        sent.append((names[step.id], clock.now()))
        await deliveries.record_sent(pool, step, now=clock.now())
        assert await _claim(pool, "step", at=clock) == []  # the next one keeps its spacing
        [following] = await fetch(actions_db, "SELECT min(due_at) AS at FROM actions.delivery"
                                  " WHERE kind = 'step' AND status = 'pending'")  # fmt: skip
        clock = FixedClock(following["at"] or clock.now())
    steps = books.sequences["welcome"].steps
    assert [name for name, _ in sent] == [step.name for step in steps]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(sent)]
    assert gaps == [b.offset - a.offset for a, b in itertools.pairwise(steps)]
    assert sent[0][1] == NOW + 30 * DAY


async def test_an_alert_logged_for_want_of_its_channel_counts_as_a_fallback(
    pool: Pool, actions_db: str
) -> None:
    # Counted only as `sent` on the log channel, it looked like a message that went out.
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=LOG)  # fmt: skip
    clock = FixedClock(NOW)
    registry = CollectorRegistry()
    dispatcher = _dispatcher(pool, Channels(), registry, kinds=("alert",), clock=clock)
    [(alert, attempt)] = await _claim(pool, "alert", at=clock)
    await dispatcher.deliver(alert, attempt)
    assert _outcomes(registry, "alert", "log") == {"sent": 1}
    fallbacks = "tierstream_actions_log_fallbacks_total"
    labels = {"kind": "alert", "channel": "webhook"}
    assert registry.get_sample_value(fallbacks, {**labels, "reason": "not_configured"}) == 1
    assert registry.get_sample_value(fallbacks, {**labels, "reason": "no_recipient"}) == 0


@pytest.mark.parametrize(("sent_steps", "ended"), [(0, "failed"), (1, "completed")])
async def test_an_enrolment_whose_every_step_died_ends_failed_not_completed(
    pool: Pool, actions_db: str, sent_steps: int, ended: str
) -> None:
    # Every step dead used to end the enrolment `completed`: the completion counts the
    # business reads included sequences that reached nobody.
    await _enrol_newbie(pool, load_playbooks(default_playbooks_path()))
    late = FixedClock(NOW + 30 * DAY)
    # Claimed later still: a step sent late moves the later ones by as much.
    done, first, claiming = 0, None, FixedClock(NOW + 365 * DAY)
    while claimed := await _claim(pool, "step", at=claiming):
        [(step, _)] = claimed
        first = first or step
        if done < sent_steps:
            await deliveries.record_sent(pool, step, now=late.now())
        else:
            await deliveries.record_failure(pool, step, "550 no such mailbox",
                                            retry_in_s=None, now=late.now())  # fmt: skip
        done += 1
    assert done == 4
    [enrolment] = await fetch(actions_db, "SELECT status, ended_at FROM actions.enrolment")
    assert enrolment == {"status": ended, "ended_at": late.now()}
    # An older attempt of the first step, whose lease ran out, reports it went out after all.
    assert first is not None
    await deliveries.record_sent(pool, first, now=late.now())
    [enrolment] = await fetch(actions_db, "SELECT status FROM actions.enrolment")
    assert enrolment["status"] == "completed"  # something did reach the customer


@pytest.mark.parametrize(("email", "ended"), [(None, "failed"), ("n@example.com", "completed")])
async def test_an_enrolment_whose_steps_all_went_to_the_log_for_want_of_email_ends_failed(
    pool: Pool, actions_db: str, email: str | None, ended: str
) -> None:
    # Every step written to the log because e-mail was not configured (or the customer had
    # no address) reached nobody, yet the enrolment ended `completed`. A step sent by e-mail
    # (configured since) did reach the customer.
    await _enrol_newbie(pool, load_playbooks(default_playbooks_path()), channels=LOG,
                        email=email)  # fmt: skip
    with smtp_server() as (port, mailbox):
        clock = FixedClock(NOW + 365 * DAY)
        for channels in (Channels(), _mail(port), Channels(), Channels()):  # e-mail once
            dispatcher = _dispatcher(pool, channels, CollectorRegistry(), kinds=("step",),
                                     clock=clock)  # fmt: skip
            await _dispatch_round(dispatcher)
            clock.advance(30 * DAY)  # past the next step's time, however late this one was
    assert len(mailbox) == (1 if email else 0)
    [enrolment] = await fetch(actions_db, "SELECT status FROM actions.enrolment")
    assert enrolment["status"] == ended


async def test_a_step_cancelled_while_it_is_sent_stays_cancelled_and_counts_once(
    pool: Pool, actions_db: str
) -> None:
    books = load_playbooks(default_playbooks_path())
    at_risk = tier_change("r1", "c", "lifecycle_stage", "established", "at_risk")
    await apply_changes(pool, [at_risk], now=NOW)
    clock = FixedClock(NOW + timedelta(minutes=1))
    registry = CollectorRegistry()
    dispatcher = _dispatcher(pool, Channels(), registry, kinds=("step",), clock=clock)
    [(step, attempt)] = await _claim(pool, "step", at=clock)  # win-back's care message
    # While it is being sent, the customer buys again: win-back exits, its steps are cancelled.
    bought = await apply_batch(pool, [], [GoalHit("c", clock.now())], [], group_id="g",
                               playbooks=books, channels=LOG, now=clock.now())  # fmt: skip
    for sequence, n in bought.cancelled_steps.items():  # as the consumer counts them
        dispatcher.metrics.steps.labels(sequence, "cancelled").inc(n)
    await dispatcher.deliver(step, attempt)  # the send succeeds
    sql = "SELECT step_name, status, sent_at FROM actions.delivery WHERE kind = 'step' ORDER BY id"
    assert await fetch(actions_db, sql) == [
        {"step_name": "care_message", "status": "cancelled", "sent_at": clock.now()},  # went out
        {"step_name": "offer", "status": "cancelled", "sent_at": None},
        {"step_name": "survey", "status": "cancelled", "sent_at": None},
    ]
    # Each step counted once: all three cancelled by the exit, none sent as well.
    assert _steps(registry, "win_back") == {"cancelled": 3}
    assert _outcomes(registry, "step", "log") == {"superseded": 1}  # the exit decided


async def test_an_older_attempts_success_after_a_newer_one_died_leaves_it_dead_but_sent(
    pool: Pool, actions_db: str
) -> None:
    await _seed_alert(pool)
    clock = FixedClock(NOW)
    registry = CollectorRegistry()
    receiver = WebhookReceiver(SECRET.encode(), fail_first=1)  # 503 to the first request
    async with serving(receiver), httpx.AsyncClient(timeout=5) as client:
        dispatcher = _dispatcher(pool, _webhook(client, receiver), registry, kinds=("alert",),
                                 clock=clock, policy=replace(POLICY, max_attempts=2))  # fmt: skip
        # The first attempt's lease runs out (0 s) before it is sent: a second one claims it,
        # is refused at the last attempt allowed and dead-letters it.
        [(first, one)] = await _claim(pool, "alert", at=clock, lease_s=0)
        [(second, two)] = await _claim(pool, "alert", at=clock)
        await dispatcher.deliver(second, two)
        await dispatcher.deliver(first, one)  # then the first one's send succeeds
    assert [r.status for r in receiver.requests] == [503, 200]
    alert = await _alert(actions_db)
    # The newer attempt decides; the send time says the receiver got it after all (for
    # whoever would replay the dead letter), and the newer attempt's error stays.
    assert (alert["status"], alert["sent_at"]) == ("dead", clock.now())
    assert "503" in str(alert["last_error"])
    assert _outcomes(registry, "alert", "webhook") == {"dead": 1, "superseded": 1}  # once


FALLBACKS = "tierstream_actions_log_fallbacks_total"
_STEP_ROWS = (
    "SELECT step_name, channel, status, idempotency_key, payload ->> 'fallback' AS fallback"
    " FROM actions.delivery WHERE kind = 'step' ORDER BY step_index"
)


def _fallbacks(registry: CollectorRegistry, kind: str) -> dict[tuple[str, str], float]:
    """The non-zero `log_fallbacks_total` series of one kind, by (channel, reason)."""
    found = {
        (channel, reason): registry.get_sample_value(
            FALLBACKS, {"kind": kind, "channel": channel, "reason": reason}
        )
        for channel in ("webhook", "email")
        for reason in ("not_configured", "no_recipient")
    }
    return {labels: value for labels, value in found.items() if value}


def _mail(port: int) -> Channels:
    return Channels(email=SmtpChannel(SmtpConfig("127.0.0.1", port, "actions@example.com",
                                                 timeout_s=5)))  # fmt: skip


async def _dispatch_round(dispatcher: Dispatcher) -> None:
    """One claim round as the running sender makes it, and the sends it started."""
    await dispatcher.step()
    await dispatcher.drain(timeout_s=10)
    assert not [t for t in dispatcher.in_flight if not t.done()]


async def test_a_step_planned_for_the_log_before_email_was_configured_goes_by_email_after(
    pool: Pool, actions_db: str
) -> None:
    # Enrolled while ACTIONS_SMTP_HOST was unset, every step was stored as `channel: log` at
    # enrolment and stayed so: configured the next day, SMTP never got one of them, and the
    # customer nothing. The channel is chosen when a step is sent.
    await _enrol_newbie(pool, load_playbooks(default_playbooks_path()), channels=LOG)
    before = await fetch(actions_db, _STEP_ROWS)
    unconfigured = '{"reason": "not_configured", "channel": "email"}'
    assert [(r["channel"], r["status"], r["fallback"]) for r in before] == [
        ("log", "pending", unconfigured)
    ] * 4
    day_1 = FixedClock(NOW + DAY)
    # Claimed in the route it goes by: a hanging SMTP server's full route holds it back.
    held = await deliveries.claim_due(pool, ("step",), now=day_1.now(), limit=10, lease_s=60,
                                      skip_routes=[("step", "email")])  # fmt: skip
    assert held == []
    registry = CollectorRegistry()
    with smtp_server() as (port, mailbox):
        dispatcher = _dispatcher(pool, _mail(port), registry, kinds=("step",), clock=day_1)
        await _dispatch_round(dispatcher)
    assert [(str(m["To"]), str(m["Message-ID"])) for m in mailbox] == [
        ("newbie@example.com", f"<{before[0]['idempotency_key']}@tierstream>")  # the same key
    ]
    after = await fetch(actions_db, _STEP_ROWS)
    sent_first = [("quick_start", "email", "sent", None)]  # what happened, for API and metrics
    rest = [(r["step_name"], "log", "pending", unconfigured) for r in before[1:]]
    assert [(r["step_name"], r["channel"], r["status"], r["fallback"]) for r in after] == (
        sent_first + rest
    )
    assert [r["idempotency_key"] for r in after] == [r["idempotency_key"] for r in before]
    async with pool.acquire() as conn:
        [enrolment] = await queries.list_enrolments(conn, "newbie", after=None, limit=10)
    assert [s["channel"] for s in enrolment["steps"]] == ["email", "log", "log", "log"]
    assert _outcomes(registry, "step", "email") == {"sent": 1}
    assert _outcomes(registry, "step", "log") == {}
    assert _fallbacks(registry, "step") == {}

    # A process without SMTP again (it was unset once more) logs the next one, as before.
    day_3 = FixedClock(NOW + 3 * DAY)
    unset = CollectorRegistry()
    await _dispatch_round(_dispatcher(pool, Channels(), unset, kinds=("step",), clock=day_3))
    second = (await fetch(actions_db, _STEP_ROWS))[1]
    assert (second["channel"], second["status"], second["fallback"]) == (
        "log", "sent", unconfigured)  # fmt: skip
    assert _outcomes(unset, "step", "log") == {"sent": 1}
    assert _fallbacks(unset, "step") == {("email", "not_configured"): 1}


async def test_a_step_planned_for_the_log_without_email_or_address_stays_there_for_the_address(
    pool: Pool, actions_db: str
) -> None:
    # Neither SMTP nor the customer's address: with SMTP since, the address still lacks.
    await _enrol_newbie(pool, load_playbooks(default_playbooks_path()), channels=LOG, email=None)
    registry = CollectorRegistry()
    with smtp_server() as (port, mailbox):
        dispatcher = _dispatcher(pool, _mail(port), registry, kinds=("step",),
                                 clock=FixedClock(NOW + DAY))  # fmt: skip
        await _dispatch_round(dispatcher)
    assert mailbox == []
    first = (await fetch(actions_db, _STEP_ROWS))[0]
    assert (first["channel"], first["status"], first["fallback"]) == (
        "log", "sent", '{"reason": "no_recipient", "channel": "email"}')  # fmt: skip
    assert _outcomes(registry, "step", "log") == {"sent": 1}
    assert _fallbacks(registry, "step") == {("email", "no_recipient"): 1}


async def test_an_alert_planned_for_the_log_goes_to_the_webhook_configured_since(
    pool: Pool, actions_db: str
) -> None:
    await apply_changes(pool, [tier_change("c1", "vip", "value_tier", "silver", "gold")],
                        now=NOW, channels=LOG)  # fmt: skip
    registry = CollectorRegistry()
    receiver = WebhookReceiver(SECRET.encode())
    async with serving(receiver), httpx.AsyncClient(timeout=5) as client:
        dispatcher = _dispatcher(pool, _webhook(client, receiver), registry, kinds=("alert",),
                                 clock=FixedClock(NOW))  # fmt: skip
        await _dispatch_round(dispatcher)
    [received] = receiver.requests
    assert received.signature_ok and "fallback" not in received.body
    sql = ("SELECT channel, status, payload ->> 'fallback' AS fallback, idempotency_key"
           " FROM actions.delivery WHERE kind = 'alert'")  # fmt: skip
    assert await fetch(actions_db, sql) == [
        {"channel": "webhook", "status": "sent", "fallback": None, "idempotency_key": received.key}
    ]
    assert _outcomes(registry, "alert", "webhook") == {"sent": 1}
    assert _fallbacks(registry, "alert") == {}


@pytest.mark.parametrize(
    ("reply", "outcome", "status"),
    [("450 4.2.0 greylisted, try again later", "retry", "pending"),
     ("550 5.1.1 no such mailbox", "dead", "dead")],
    ids=["greylisted", "unknown"],
)  # fmt: skip
async def test_a_step_planned_for_the_log_and_refused_by_email_records_email_with_the_failure(
    pool: Pool, actions_db: str, reply: str, outcome: str, status: str
) -> None:
    await _enrol_newbie(pool, load_playbooks(default_playbooks_path()), channels=LOG)
    registry = CollectorRegistry()
    with smtp_server(rcpt_reply=reply) as (port, mailbox):
        dispatcher = _dispatcher(pool, _mail(port), registry, kinds=("step",),
                                 clock=FixedClock(NOW + DAY))  # fmt: skip
        await _dispatch_round(dispatcher)
    assert mailbox == []
    sql = ("SELECT channel, status, attempts, last_error, payload ->> 'fallback' AS fallback"
           " FROM actions.delivery WHERE kind = 'step' ORDER BY step_index LIMIT 1")  # fmt: skip
    [first] = await fetch(actions_db, sql)
    assert (first["channel"], first["status"], first["attempts"], first["fallback"]) == (
        "email", status, 1, None)  # fmt: skip
    assert str(first["last_error"]).startswith(f"recipient refused: SMTP {reply[:3]}")
    assert _outcomes(registry, "step", "email") == {outcome: 1}
    assert _fallbacks(registry, "step") == {}
