"""Durable sequences under an advanced clock: on time (never early, never skipped), and ended
early by an exit condition with the remaining steps cancelled."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shared.clock import FixedClock
from shared.domain.playbooks import default_playbooks_path
from shared.topics import Topics
from tests.integration.actions.support import (
    AUTH,
    DAY,
    NOW,
    actions_settings,
    eventually,
    fetch,
    produce_changes,
    produce_raw,
    purchase,
    running_actions,
    served_rounds,
    smtp_server,
    subjects,
    tier_change,
    wait_rounds,
)

WELCOME = [
    (1, "Welcome! Your quick-start guide"),
    (3, "Best practices from our customers"),
    (7, "Your questions, answered"),
    (14, "Two weeks in: how is it going?"),
]


async def _enrolments(url: str, customer_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=5) as client:
        response = await client.get(
            "/v1/sequences/enrollments", params={"customer_id": customer_id}
        )
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _iso(offset: timedelta) -> str:
    return (NOW + offset).isoformat().replace("+00:00", "Z")


async def test_the_welcome_sequence_sends_on_days_1_3_7_and_14_never_early(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock
) -> None:
    with smtp_server() as (port, mailbox):
        settings = actions_settings(base_env, smtp_host="127.0.0.1", smtp_port=port)
        async with running_actions(settings, clock) as url:
            change = tier_change("chg-new", "newbie", "lifecycle_stage", "lead", "new",
                                 email="newbie@example.com")  # fmt: skip
            await produce_changes(kafka_bootstrap, topic_namespace, [change])
            [enrolment] = await eventually(lambda: _enrolments(url, "newbie"), what="enrolment")
            assert [s["due_at"] for s in enrolment["steps"]] == [_iso(d * DAY) for d, _ in WELCOME]
            for sent, (day, subject) in enumerate(WELCOME):
                clock.set(NOW + day * DAY - timedelta(seconds=1))
                await wait_rounds(served_rounds(url, "scheduler"))  # nothing may go out early
                assert len(mailbox) == sent, f"a step was sent before day {day}"
                # Not even claimed: a claim counts an attempt at once, before the mail is out.
                [enrolment] = await _enrolments(url, "newbie")
                assert _unsent(enrolment) == [("scheduled", 0)] * (len(WELCOME) - sent)
                clock.set(NOW + day * DAY)
                # Wait for the step to be recorded too, before the clock moves on.
                await eventually(partial(_steps_sent, url, sent + 1), what=f"day {day}")
                assert subjects(mailbox)[-1] == subject
            await wait_rounds(served_rounds(url, "scheduler"))
            assert subjects(mailbox) == [s for _, s in WELCOME]  # each exactly once, in order
            assert {str(m["To"]) for m in mailbox} == {"newbie@example.com"}
            assert len({str(m["Message-ID"]) for m in mailbox}) == 4
            # Dated by the service's clock (RFC 5322 requires a Date), each on its day.
            dates = [parsedate_to_datetime(str(m["Date"])) for m in mailbox]
            assert dates == [NOW + d * DAY for d, _ in WELCOME]

            [done] = await eventually(lambda: _completed(url, "newbie"), what="completion")
            assert [(s["status"], s["sent_at"], s["attempts"]) for s in done["steps"]] == [
                ("sent", _iso(d * DAY), 1) for d, _ in WELCOME
            ]


async def test_a_step_picked_up_inside_quiet_hours_waits_for_their_end(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Quiet 21:00-08:00 UTC. The day-1 step falls due at 10:00, outside them, but the service
    # only gets to it at 22:00 (down, or behind): it must wait for 08:00, not go out at once.
    quiet = 'quiet_hours: {start: "21:00", end: "08:00", timezone: UTC}\n    reentry: never'
    edited = tmp_path / "playbooks.yaml"
    text = default_playbooks_path().read_text(encoding="utf-8")
    edited.write_text(text.replace("reentry: never", quiet, 1))
    with smtp_server() as (port, mailbox):
        settings = actions_settings(base_env, smtp_host="127.0.0.1", smtp_port=port,
                                    playbooks_file=edited)  # fmt: skip
        async with running_actions(settings, clock) as url:
            change = tier_change("chg-new", "newbie", "lifecycle_stage", "lead", "new",
                                 email="newbie@example.com")  # fmt: skip
            await produce_changes(kafka_bootstrap, topic_namespace, [change])
            [enrolment] = await eventually(lambda: _enrolments(url, "newbie"), what="enrolment")
            assert enrolment["steps"][0]["due_at"] == _iso(DAY)  # 10:00: not quiet
            clock.set(NOW + DAY + timedelta(hours=12))  # 22:00
            moved = _iso(DAY + timedelta(hours=22))  # 08:00 the next morning
            await eventually(partial(_first_step_due, url, moved), what="the deferral")
            await wait_rounds(served_rounds(url, "scheduler"))
            assert mailbox == []
            [enrolment] = await _enrolments(url, "newbie")
            assert enrolment["steps"][0]["due_at"] == moved  # still put back,
            assert _unsent(enrolment) == [("scheduled", 0)] * len(WELCOME)  # not claimed again
            clock.set(NOW + DAY + timedelta(hours=22))
            await eventually(partial(_steps_sent, url, 1), what="the step at 08:00")
            assert subjects(mailbox) == [WELCOME[0][1]]
            [enrolment] = await _enrolments(url, "newbie")
            assert enrolment["steps"][0]["sent_at"] == moved


async def test_steps_planned_before_smtp_was_configured_go_by_email_once_it_is(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock
) -> None:
    # Enrolled while ACTIONS_SMTP_HOST was unset, each step was stored as `channel: log` and
    # stayed so when the operator configured SMTP (as the runbook says): the customer got
    # none of them. The channel of such a step is the one configured when it is sent.
    async with running_actions(actions_settings(base_env), clock) as url:
        change = tier_change("chg-new", "newbie", "lifecycle_stage", "lead", "new",
                             email="newbie@example.com")  # fmt: skip
        await produce_changes(kafka_bootstrap, topic_namespace, [change])
        [enrolment] = await eventually(lambda: _enrolments(url, "newbie"), what="enrolment")
        assert [s["channel"] for s in enrolment["steps"]] == ["log"] * len(WELCOME)
    with smtp_server() as (port, mailbox):
        settings = actions_settings(base_env, smtp_host="127.0.0.1", smtp_port=port)
        clock.set(NOW + DAY)
        async with running_actions(settings, clock) as url:
            await eventually(partial(_steps_sent, url, 1), what="the day-1 step")
            assert [(str(m["To"]), str(m["Subject"])) for m in mailbox] == [
                ("newbie@example.com", WELCOME[0][1])
            ]
            [enrolment] = await _enrolments(url, "newbie")
            assert [(s["channel"], s["status"]) for s in enrolment["steps"]] == [
                ("email", "sent"), *[("log", "scheduled")] * (len(WELCOME) - 1)
            ]  # fmt: skip
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }  # fmt: skip
    step = (("kind", "step"),)
    assert samples[DELIVERIES, (("channel", "email"), *step, ("outcome", "sent"))] == 1
    assert samples[DELIVERIES, (("channel", "log"), *step, ("outcome", "sent"))] == 0
    assert samples[FALLBACKS, (("channel", "email"), *step, ("reason", "not_configured"))] == 0


DELIVERIES = "tierstream_actions_deliveries_total"
FALLBACKS = "tierstream_actions_log_fallbacks_total"


def _unsent(enrolment: dict[str, Any]) -> list[tuple[str, int]]:
    """(status, attempts) of the steps not sent yet."""
    return [(s["status"], s["attempts"]) for s in enrolment["steps"] if s["status"] != "sent"]


async def _first_step_due(url: str, due_at: str) -> bool:
    [enrolment] = await _enrolments(url, "newbie")
    moved: bool = enrolment["steps"][0]["due_at"] == due_at
    return moved


async def _steps_sent(url: str, count: int, customer_id: str = "newbie") -> bool:
    [enrolment] = await _enrolments(url, customer_id)
    recorded: int = sum(s["status"] == "sent" for s in enrolment["steps"])
    return recorded == count


async def _completed(url: str, customer_id: str) -> list[dict[str, Any]]:
    items = await _enrolments(url, customer_id)
    return items if items and items[0]["status"] == "completed" else []


async def _now(value: Any) -> Any:
    return value


async def test_a_purchase_ends_win_back_and_cancels_the_remaining_steps(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock,
    database_url: str,
) -> None:  # fmt: skip
    purchases = Topics(topic_namespace).purchases

    async def buy(event_id: str, at_offset: timedelta) -> None:
        event = purchase(event_id, "lapsed", NOW + at_offset)
        await produce_raw(
            kafka_bootstrap, purchases, [(b"lapsed", event.model_dump_json().encode(), [])]
        )

    with smtp_server() as (port, mailbox):
        settings = actions_settings(base_env, smtp_host="127.0.0.1", smtp_port=port,
                                    alert_email_to="care@example.com")  # fmt: skip
        async with running_actions(settings, clock) as url:
            # A purchase from before the customer became at risk is not "buying again".
            await buy("old", -40 * DAY)
            at_risk = tier_change("chg-risk", "lapsed", "lifecycle_stage", "established",
                                  "at_risk", email="lapsed@example.com")  # fmt: skip
            await produce_changes(kafka_bootstrap, topic_namespace, [at_risk])
            await eventually(lambda: _now(len(mailbox) == 2), what="care alert and day-0 step")
            assert sorted((str(m["To"]), str(m["Subject"])) for m in mailbox) == [
                ("care@example.com", "Customer lapsed is at risk"),
                ("lapsed@example.com", "We miss you"),
            ]
            # The mail server has the day-0 step before it is recorded sent: the purchase
            # below, read in between, would find it in flight and cancel it with the rest.
            await eventually(partial(_steps_sent, url, 1, "lapsed"), what="day 0 recorded")
            goal = "SELECT 1 FROM actions.goal_event WHERE customer_id = 'lapsed'"
            await eventually(lambda: fetch(database_url, goal), what="the old purchase consumed")
            [enrolment] = await _enrolments(url, "lapsed")
            assert (enrolment["sequence"], enrolment["status"]) == ("win_back", "active")

            clock.advance(DAY)
            await buy("again", DAY)
            [ended] = await eventually(lambda: _exited(url, "lapsed"), what="the exit")
            assert ended["exit_reason"] == "goal:purchase"
            assert [(s["name"], s["status"]) for s in ended["steps"]] == [
                ("care_message", "sent"), ("offer", "cancelled"), ("survey", "cancelled"),
            ]  # fmt: skip
            clock.advance(10 * DAY)
            await wait_rounds(served_rounds(url, "scheduler"))
            assert len(mailbox) == 2  # nothing more went out
            [ended] = await _enrolments(url, "lapsed")
            assert _unsent(ended) == [("cancelled", 0)] * 2  # nor was claimed


async def _exited(url: str, customer_id: str) -> list[dict[str, Any]]:
    items = await _enrolments(url, customer_id)
    return items if items and items[0]["status"] == "exited" else []


async def test_after_an_outage_a_due_step_waits_for_the_purchase_that_ends_its_sequence(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, clock: FixedClock,
    database_url: str,
) -> None:  # fmt: skip
    # Down from day 0 to day 4: the customer bought again on day 1, and the offer (day 3)
    # fell due meanwhile. Sent at restart before the purchase was read, it would offer a
    # discount to a customer who had just come back.
    with smtp_server() as (port, mailbox):
        # A backlog of one record: under the default ACTIONS_STEP_MAX_LAG (1,000) the steps
        # would not wait for it, and the test would race the consumer (it lost under load).
        settings = actions_settings(base_env, smtp_host="127.0.0.1", smtp_port=port,
                                    alert_email_to="care@example.com", step_max_lag=0)  # fmt: skip
        async with running_actions(settings, clock) as url:
            at_risk = tier_change("chg-risk", "lapsed", "lifecycle_stage", "established",
                                  "at_risk", email="lapsed@example.com")  # fmt: skip
            await produce_changes(kafka_bootstrap, topic_namespace, [at_risk])
            await eventually(lambda: _now(len(mailbox) == 2), what="care alert and day-0 step")
            [enrolment] = await _enrolments(url, "lapsed")
            assert enrolment["status"] == "active"
        bought = purchase("again", "lapsed", NOW + DAY)
        await produce_raw(kafka_bootstrap, Topics(topic_namespace).purchases,
                          [(b"lapsed", bought.model_dump_json().encode(), [])])  # fmt: skip
        clock.advance(4 * DAY)
        async with running_actions(settings, clock) as url:
            # Back in the group it has just left: the embedded broker takes about twice the
            # session timeout to let it in again (11.4 s of the 20 s this had, idle).
            [ended] = await eventually(lambda: _exited(url, "lapsed"), within=60, what="the exit")
            assert ended["exit_reason"] == "goal:purchase"
            assert [(s["name"], s["status"]) for s in ended["steps"]] == [
                ("care_message", "sent"), ("offer", "cancelled"), ("survey", "cancelled"),
            ]  # fmt: skip
            await wait_rounds(served_rounds(url, "scheduler"))
            assert len(mailbox) == 2  # the offer never went out
            [ended] = await _enrolments(url, "lapsed")
            assert _unsent(ended) == [("cancelled", 0)] * 2  # nor was claimed
