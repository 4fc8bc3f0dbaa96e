"""How planned requests become rows: batch netting, channel fallbacks, keys and due times."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from services.actions.effects import (
    ChannelConfig,
    EnrolRow,
    TaskRow,
    alerts_without_recipient,
    collect_effects,
    idempotency_key,
    step_rows,
    task_push_row,
    unconfigured_channels,
)
from shared.contracts import TierChanged
from shared.domain.playbooks import (
    ActionRequest,
    EnrolRequest,
    Playbooks,
    default_playbooks_path,
    load_playbooks,
    plan_actions,
)

NOW = datetime(2026, 5, 1, 8, tzinfo=UTC)
BOOKS: Playbooks = load_playbooks(default_playbooks_path())
ALL = ChannelConfig(webhook=True, email=True, crm=True, alert_email_to="care@example.com")
NONE = ChannelConfig(webhook=False, email=False, crm=False)


def change(
    cid: str, customer: str, dimension: str, from_: str | None, to: str,
    decided: datetime = NOW, **attrs: Any,
) -> TierChanged:  # fmt: skip
    return TierChanged.model_validate({
        "id": cid, "customer_id": customer, "dimension": dimension, "from": from_, "to": to,
        "cause": "event", "rule": "r", "features": {}, "rules_version": "v",
        "occurred_at": decided - timedelta(days=30), "emitted_at": decided, "attributes": attrs,
    })  # fmt: skip


def planned(*changes: TierChanged) -> list[tuple[TierChanged, list[ActionRequest]]]:
    return [(c, plan_actions(c, BOOKS).requests) for c in changes]


def test_new_then_at_risk_in_one_batch_never_starts_the_welcome_sequence() -> None:
    effects = collect_effects(planned(
        change("1", "c", "lifecycle_stage", "lead", "new"),
        change("2", "c", "lifecycle_stage", "new", "at_risk"),
    ), ALL, now=NOW)  # fmt: skip
    assert set(effects.enrols) == {("c", "win_back")}
    assert [(e.customer_id, e.sequence) for e in effects.exits] == [("c", "welcome")]
    # Kept as history for the re-entry policy, never started.
    [ended] = effects.ended
    assert (ended.row.customer_id, ended.row.tier_change_id, ended.reason) == (
        "c",
        "1",
        "lifecycle_stage:at_risk",
    )
    assert not ended.after_exit


def test_every_enrolment_begun_and_ended_in_a_batch_is_kept_and_knows_an_exit_came_first() -> None:
    effects = collect_effects(planned(
        change("1", "c", "value_tier", "gold", "silver"),
        change("2", "c", "value_tier", "silver", "gold"),
        change("3", "c", "value_tier", "gold", "bronze"),
        change("4", "c", "value_tier", "bronze", "gold"),
        change("5", "c", "value_tier", "gold", "silver"),
        change("6", "d", "value_tier", "silver", "gold"),
        change("7", "d", "value_tier", "gold", "silver"),
    ), ALL, now=NOW)  # fmt: skip
    assert [(e.row.tier_change_id, e.reason, e.after_exit) for e in effects.ended] == [
        ("2", "value_tier:bronze", True),
        ("4", "value_tier:silver", True),
        ("6", "value_tier:silver", False),
    ]
    assert effects.enrols == {}


def test_an_exit_before_an_enrolment_in_one_batch_keeps_the_new_enrolment() -> None:
    effects = collect_effects(planned(
        change("1", "c", "value_tier", "gold", "silver"),
        change("2", "c", "value_tier", "silver", "gold"),
    ), ALL, now=NOW)  # fmt: skip
    assert set(effects.enrols) == {("c", "vip_welcome")}
    assert [e.sequence for e in effects.exits] == ["vip_welcome"]


def test_two_triggers_of_one_playbook_in_a_batch_give_one_task_from_the_latest() -> None:
    effects = collect_effects(planned(
        change("1", "c", "value_tier", "silver", "gold"),
        change("2", "c", "value_tier", "bronze", "gold", NOW + timedelta(hours=5)),
    ), ALL, now=NOW)  # fmt: skip
    [task] = effects.tasks.values()
    assert (task.tier_change_id, task.queue, task.priority) == ("2", "senior-sales", "high")
    # As the store refreshes an open task: the SLA already running, every trigger counted.
    assert (task.due_at, task.triggers) == (NOW + timedelta(days=2), 2)
    assert effects.planned[("task", "gold_upgrade")] == 2


def test_a_task_refreshed_keeps_its_assignee_and_earliest_due_time() -> None:
    first = TaskRow("c", "1", "p", "t1", "q1", "high", "ann", NOW + timedelta(days=1))
    second = TaskRow("c", "2", "p", "t2", "q2", "low", "bob", NOW)
    third = TaskRow("c", "3", "p", "t3", "q3", "normal", None, NOW + timedelta(days=2))
    assert first.refreshed(second).refreshed(third) == TaskRow(
        "c", "3", "p", "t3", "q3", "normal", "ann", NOW, triggers=3
    )
    unassigned = replace(first, assignee=None)
    assert unassigned.refreshed(second).assignee == "bob"


def test_a_task_is_due_its_time_after_the_decision_not_after_it_was_consumed() -> None:
    changed = NOW - timedelta(hours=6)
    effects = collect_effects(
        planned(change("1", "c", "value_tier", "silver", "gold", changed)), ALL, now=NOW
    )
    [task] = effects.tasks.values()
    assert task.due_at == changed + timedelta(days=2)
    assert [a.due_at for a in effects.alerts] == [NOW]  # an alert goes out when consumed


def test_unconfigured_channels_fall_back_to_the_log() -> None:
    configured = collect_effects(
        planned(change("1", "c", "lifecycle_stage", "new", "at_risk")), ALL, now=NOW
    )
    bare = collect_effects(
        planned(change("1", "c", "lifecycle_stage", "new", "at_risk")), NONE, now=NOW
    )
    [care] = configured.alerts
    assert (care.channel, care.recipient, care.audience) == ("email", "care@example.com", "care")
    assert [(a.channel, a.recipient) for a in bare.alerts] == [("log", None)]
    # Said in the payload, so the send counts it apart from a real one.
    assert "fallback" not in care.payload
    assert bare.alerts[0].payload["fallback"] == {"channel": "email", "reason": "not_configured"}
    no_team = replace(ALL, alert_email_to=None)
    [nobody] = collect_effects(
        planned(change("1", "c", "lifecycle_stage", "new", "at_risk")), no_team, now=NOW
    ).alerts
    assert nobody.channel == "log"
    assert nobody.payload["fallback"] == {"channel": "email", "reason": "no_recipient"}


def test_a_delivery_logged_for_want_of_its_channel_goes_by_it_once_it_is_configured() -> None:
    # Chosen once, when the rows were written: a step due a week later stayed in the log
    # though its channel had been configured meanwhile.
    [row] = step_rows(7, EnrolRow("c", "1", NOW, NOW, _welcome("c@example.com")), NONE)[:1]
    assert (row.channel, row.payload["fallback"]["reason"]) == ("log", "not_configured")
    assert NONE.at_send(row.channel, row.recipient, row.payload) == (row.channel, row.payload)
    channel, payload = ALL.at_send(row.channel, row.recipient, row.payload)
    assert (channel, payload) == ("email", {k: v for k, v in row.payload.items()
                                            if k != "fallback"})  # fmt: skip
    # Without an address it stays in the log, now for want of the address.
    assert ALL.at_send("log", None, row.payload) == (
        "log", {**payload, "fallback": {"channel": "email", "reason": "no_recipient"}})  # fmt: skip
    # Logged for want of an address, or sent as asked, a delivery goes as planned.
    nobody = {**payload, "fallback": {"channel": "email", "reason": "no_recipient"}}
    assert ALL.at_send("log", None, nobody) == ("log", nobody)
    assert NONE.at_send("email", "c@example.com", payload) == ("email", payload)
    [alert] = collect_effects(planned(change("1", "c", "value_tier", "silver", "gold")), NONE,
                              now=NOW).alerts  # fmt: skip
    assert ALL.at_send(alert.channel, alert.recipient, alert.payload) == (
        "webhook", {"change": alert.payload["change"]})  # fmt: skip


def _welcome(email: str) -> EnrolRequest:
    new = change("1", "c", "lifecycle_stage", "lead", "new", email=email)
    [request] = [r for r in plan_actions(new, BOOKS).requests if isinstance(r, EnrolRequest)]
    return request


def test_alert_keys_are_stable_per_change_and_differ_between_changes() -> None:
    first = collect_effects(planned(change("1", "c", "value_tier", "silver", "gold")), ALL, now=NOW)
    again = collect_effects(planned(change("1", "c", "value_tier", "silver", "gold")), ALL, now=NOW)
    other = collect_effects(planned(change("2", "c", "value_tier", "silver", "gold")), ALL, now=NOW)
    assert first.alerts[0].key == again.alerts[0].key != other.alerts[0].key
    assert first.alerts[0].payload["change"]["id"] == "1"


def test_steps_are_due_at_their_offsets_and_need_an_address_for_email() -> None:
    # Consumed six hours after the scorer decided it (a backlog): the schedule counts from the
    # decision, not from consumption, nor from the event that led to it (which may be old).
    changed = NOW - timedelta(hours=6)
    effects = collect_effects(planned(
        change("1", "c", "lifecycle_stage", "lead", "new", changed, email="c@example.com"),
        change("2", "d", "lifecycle_stage", "lead", "new", changed),
    ), ALL, now=NOW)  # fmt: skip
    [first] = effects.enrols[("c", "welcome")]
    with_mail = step_rows(7, first, ALL)
    assert [(s.step_name, s.due_at - changed, s.channel) for s in with_mail] == [
        ("quick_start", timedelta(days=1), "email"), ("best_practices", timedelta(days=3), "email"),
        ("faq", timedelta(days=7), "email"), ("check_in", timedelta(days=14), "email"),
    ]  # fmt: skip
    assert len({s.key for s in with_mail}) == 4 and with_mail[0].key == idempotency_key(
        "step", 7, 0
    )
    [other] = effects.enrols[("d", "welcome")]
    without = step_rows(8, other, ALL)
    assert {s.channel for s in without} == {"log"}
    assert all(s.payload["fallback"] == {"channel": "email", "reason": "no_recipient"}
               for s in without)  # fmt: skip
    assert not any("fallback" in s.payload for s in with_mail)


def test_a_task_push_carries_the_task_and_a_key_per_task_and_trigger() -> None:
    task = {"id": 5, "tier_change_id": "chg", "customer_id": "c", "playbook": "p", "queue": "q",
            "title": "Call"}  # fmt: skip
    row = task_push_row(task, now=NOW)
    assert (row.kind, row.channel, row.payload, row.body) == (
        "task",
        "webhook",
        {"task": task, "task_event": "created"},
        "Call",
    )
    assert row.key == idempotency_key("task", 5, "chg")
    # A change through the API: one push per change, keyed by what it did and when.
    task["updated_at"] = "2026-05-01T09:00:00+00:00"
    done = task_push_row(task, now=NOW, event="completed")
    assert done.payload == {"task": task, "task_event": "completed"}
    assert done.key == idempotency_key("task", 5, "completed", "2026-05-01T09:00:00+00:00")


def test_a_task_push_escapes_its_slack_text_and_keeps_the_raw_title_as_data() -> None:
    # The title names the customer: `<!channel>` pinged everyone where the CRM URL is a
    # Slack-compatible hook, while the alert of the same change had it escaped.
    title = "Welcome <!channel> *pwn* <https://evil.example|click> & co"
    task = {"id": 5, "tier_change_id": "chg", "customer_id": "c", "playbook": "p", "queue": "q",
            "title": title}  # fmt: skip
    row = task_push_row(task, now=NOW)
    assert row.body == (
        "Welcome &lt;!channel&gt; *pwn* &lt;https://evil.example|click&gt; &amp; co"
    )
    assert row.payload == {"task": task, "task_event": "created"} and row.subject == title


def test_the_channels_the_playbooks_ask_for_without_settings_are_named() -> None:
    # The shipped playbooks alert by webhook and e-mail and send steps by e-mail.
    assert unconfigured_channels(BOOKS, NONE) == ["email", "webhook"]
    assert unconfigured_channels(BOOKS, replace(NONE, webhook=True)) == ["email"]
    assert unconfigured_channels(BOOKS, ALL) == []


def test_email_alerts_without_an_address_are_named_when_email_is_configured() -> None:
    # The shipped care alert (at_risk) goes by e-mail with no `to`: with SMTP set up but no
    # ACTIONS_ALERT_EMAIL_TO, every one of them went to the log without a start-up word.
    no_address = replace(ALL, alert_email_to=None)
    assert alerts_without_recipient(BOOKS, no_address) == ["at_risk"]
    assert alerts_without_recipient(BOOKS, ALL) == []
    assert alerts_without_recipient(BOOKS, NONE) == []  # unconfigured_channels names e-mail
