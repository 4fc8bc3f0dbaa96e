"""From planned action requests to the rows one batch writes (pure: no I/O, time passed in).

The domain decides *what* a change calls for; this module decides *how it is stored*:
channel fallbacks for unconfigured channels, stable idempotency keys, due times, and
the net effect of several changes of one customer inside one batch.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shared.contracts import TierChanged
from shared.domain.playbook_model import AlertAction
from shared.domain.playbook_requests import quiet_hours_record, task_due_at
from shared.domain.playbook_templates import slack_escape
from shared.domain.playbooks import (
    ActionRequest,
    AlertRequest,
    Channel,
    EnrolRequest,
    ExitRequest,
    Playbooks,
    TaskRequest,
    step_due_at,
)

_KEYS = uuid.UUID("0b7e3a52-61c4-4c36-9d0e-6a2f1f7f3c11")


def idempotency_key(*parts: object) -> str:
    """A stable key for one external effect: the same inputs always give the same key."""
    return str(uuid.uuid5(_KEYS, "\x1f".join(str(p) for p in parts)))


@dataclass(frozen=True)
class ChannelConfig:
    """Which channels are configured; an unconfigured one falls back to the log (until it
    is configured: `at_send`)."""

    webhook: bool
    email: bool
    crm: bool
    alert_email_to: str | None = None

    def resolve(self, channel: Channel, recipient: str | None) -> tuple[str, str | None]:
        """The channel actually used and the recipient (e-mail needs a server and an address)."""
        if channel is Channel.WEBHOOK and self.webhook:
            return "webhook", None
        if channel is Channel.EMAIL and self.email and recipient:
            return "email", recipient
        return "log", recipient

    def fallback(self, channel: Channel, recipient: str | None) -> dict[str, dict[str, str]]:
        """For a delivery's payload: why it goes to the log rather than to the `channel`
        its playbook asked for (counted when it is logged); empty when it goes as asked."""
        if channel is Channel.LOG or self.resolve(channel, recipient)[0] != "log":
            return {}
        configured = self.webhook if channel is Channel.WEBHOOK else self.email
        reason = "no_recipient" if configured else "not_configured"
        return {"fallback": {"channel": channel.value, "reason": reason}}

    def at_send(
        self, channel: str, recipient: str | None, payload: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """A planned delivery's channel and payload when a process configured as this one
        sends it. One planned for the log because the channel its playbook asked for was not
        configured then (its `fallback`, reason `not_configured`) goes through that channel if
        it is configured now, its `fallback` dropped; an e-mail needs its recipient too, and
        without one stays in the log, its reason now `no_recipient`. Any other delivery (one
        logged for want of a recipient too) goes as planned."""
        fallback = payload.get("fallback")
        if (
            channel != "log" or not isinstance(fallback, dict)
            or fallback.get("reason") != "not_configured"
            or fallback.get("channel") not in (Channel.WEBHOOK, Channel.EMAIL)
        ):  # fmt: skip
            return channel, payload
        asked = Channel(fallback["channel"])
        rest = {k: v for k, v in payload.items() if k != "fallback"}
        return self.resolve(asked, recipient)[0], {**rest, **self.fallback(asked, recipient)}


def unconfigured_channels(playbooks: Playbooks, channels: ChannelConfig) -> list[str]:
    """The channels the playbooks' alerts and steps ask for that this process has no
    configuration for: their messages will be written to the log instead."""
    asked = {a.channel for book in playbooks.playbooks for a in book.actions
             if isinstance(a, AlertAction)}  # fmt: skip
    asked |= {step.channel for sequence in playbooks.sequences.values() for step in sequence.steps}
    configured = {Channel.LOG, *([Channel.WEBHOOK] if channels.webhook else []),
                  *([Channel.EMAIL] if channels.email else [])}  # fmt: skip
    return sorted(c.value for c in asked - configured)


def alerts_without_recipient(playbooks: Playbooks, channels: ChannelConfig) -> list[str]:
    """The playbooks with an e-mail alert that names no `to` while ACTIONS_ALERT_EMAIL_TO is
    unset: with e-mail configured, each of their alerts is written to the log instead."""
    if channels.alert_email_to or not channels.email:
        return []  # without e-mail, `unconfigured_channels` says so already
    return sorted({book.name for book in playbooks.playbooks for a in book.actions
                   if isinstance(a, AlertAction) and a.channel is Channel.EMAIL
                   and not a.to})  # fmt: skip


@dataclass(frozen=True)
class DeliveryRow:
    """One external message to send (an alert, a task push or a sequence step)."""

    key: str
    kind: str
    customer_id: str
    tier_change_id: str | None
    playbook: str | None
    audience: str | None
    channel: str
    recipient: str | None
    subject: str
    body: str
    payload: dict[str, Any]
    due_at: datetime
    enrolment_id: int | None = None
    step_index: int | None = None
    step_name: str | None = None


@dataclass(frozen=True)
class TaskRow:
    customer_id: str
    tier_change_id: str
    playbook: str
    title: str
    queue: str
    priority: str
    assignee: str | None
    due_at: datetime
    triggers: int = 1  # the changes of the batch that triggered it

    def refreshed(self, trigger: TaskRow) -> TaskRow:
        """This task triggered again, as the store refreshes an open task (`upsert_tasks`): the
        latest trigger's details, the first assignee, the earliest due time, every trigger."""
        return replace(
            trigger,
            assignee=self.assignee if self.assignee is not None else trigger.assignee,
            due_at=min(self.due_at, trigger.due_at),
            triggers=self.triggers + trigger.triggers,
        )


@dataclass(frozen=True)
class EnrolRow:
    customer_id: str
    tier_change_id: str
    trigger_at: datetime  # the trigger's event time: a goal reached after it ends the enrolment
    decided_at: datetime  # when the scorer decided the change: the steps count from it
    request: EnrolRequest


@dataclass(frozen=True)
class EndedRow:
    """An enrolment begun and ended within one batch: never started (no steps), but stored as
    ended, since one change at a time it would be history the re-entry policy reads."""

    row: EnrolRow
    reason: str
    # An exit of its sequence came before it in the batch: that exit, not this enrolment's,
    # ends an enrolment active before the batch (which would otherwise have refused it).
    after_exit: bool
    # Later requests of the same sequence before the exit: one change at a time, each would
    # have been tried in turn while none was admitted (see `Effects.enrols`).
    alternates: tuple[EnrolRow, ...] = ()

    def candidates(self) -> list[EnrolRow]:
        return [self.row, *self.alternates]


@dataclass(frozen=True)
class ExitRow:
    customer_id: str
    sequence: str
    reason: str


@dataclass
class Effects:
    """The net effect of a batch of fresh tier changes."""

    tasks: dict[tuple[str, str], TaskRow] = field(default_factory=dict)
    alerts: list[DeliveryRow] = field(default_factory=list)
    # Per customer and sequence, the batch's enrolment requests since its last exit, in order:
    # the first the re-entry policy and goals admit is the one enrolled (one change at a
    # time, the earlier ones would have been refused and the later ones refused as it ran).
    enrols: dict[tuple[str, str], list[EnrolRow]] = field(default_factory=dict)
    exits: list[ExitRow] = field(default_factory=list)
    planned: Counter[tuple[str, str]] = field(default_factory=Counter)
    ended: list[EndedRow] = field(default_factory=list)  # in consumption order
    exited: set[tuple[str, str]] = field(default_factory=set)  # (customer, sequence) of `exits`


def collect_effects(
    planned: Iterable[tuple[TierChanged, list[ActionRequest]]],
    channels: ChannelConfig,
    *,
    now: datetime,
) -> Effects:
    """Fold each change's requests, in consumption order, into the rows to write."""
    effects = Effects()
    for change, requests in planned:
        for request in requests:
            _add(effects, change, request, channels, now)
    return effects


def _add(
    effects: Effects, change: TierChanged, request: ActionRequest, channels: ChannelConfig,
    now: datetime,
) -> None:  # fmt: skip
    customer = change.customer_id
    match request:
        case ExitRequest(sequence=sequence, reason=reason):
            # Enrolled and exited within one batch: the enrolment never starts (no steps).
            started = effects.enrols.pop((customer, sequence), None)
            if started is not None:
                # No exit came between its enrolment and this one: the exits before this
                # one came before the enrolment.
                after_exit = (customer, sequence) in effects.exited
                first, *later = started
                effects.ended.append(EndedRow(first, reason, after_exit, tuple(later)))
            effects.exits.append(ExitRow(customer, sequence, reason))
            effects.exited.add((customer, sequence))
            return
        case EnrolRequest(sequence=sequence):
            effects.enrols.setdefault((customer, sequence), []).append(
                EnrolRow(customer, change.id, change.occurred_at, change.emitted_at, request)
            )
        case TaskRequest():
            task = TaskRow(
                customer, change.id, request.playbook, request.title, request.queue,
                request.priority.value, request.assignee, task_due_at(change.emitted_at, request),
            )  # fmt: skip
            # Refreshed within the batch as it would be one change at a time.
            earlier = effects.tasks.get((customer, request.playbook))
            effects.tasks[(customer, request.playbook)] = (
                task if earlier is None else earlier.refreshed(task)
            )
        case AlertRequest():
            effects.alerts.append(alert_row(change, request, channels, now=now))
    if not isinstance(request, ExitRequest):
        effects.planned[(request.kind, request.playbook)] += 1


def alert_row(
    change: TierChanged, alert: AlertRequest, channels: ChannelConfig, *, now: datetime
) -> DeliveryRow:
    """The delivery of one alert; e-mail alerts without a recipient go to the team address."""
    to = alert.to or (channels.alert_email_to if alert.channel is Channel.EMAIL else None)
    channel, recipient = channels.resolve(alert.channel, to)
    return DeliveryRow(
        key=idempotency_key("alert", change.id, alert.playbook, alert.action),
        kind="alert", customer_id=change.customer_id, tier_change_id=change.id,
        playbook=alert.playbook, audience=alert.audience, channel=channel, recipient=recipient,
        subject=alert.subject, body=alert.text,
        payload={"change": change.model_dump(mode="json", by_alias=True),
                 **channels.fallback(alert.channel, to)}, due_at=now,
    )  # fmt: skip


def step_rows(enrolment_id: int, row: EnrolRow, channels: ChannelConfig) -> list[DeliveryRow]:
    """The scheduled steps of a new enrolment, each due at its offset (after quiet hours) from
    the moment the scorer decided the change (not when it was consumed here)."""
    request = row.request
    payload: dict[str, Any] = {"sequence": request.sequence}
    if request.quiet_hours is not None:  # checked again when the step is sent
        payload["quiet_hours"] = quiet_hours_record(request.quiet_hours)
    out = []
    for step in request.steps:
        channel, recipient = channels.resolve(step.channel, step.to)
        out.append(DeliveryRow(
            key=idempotency_key("step", enrolment_id, step.index),
            kind="step", customer_id=row.customer_id, tier_change_id=row.tier_change_id,
            playbook=request.playbook, audience=None, channel=channel, recipient=recipient,
            subject=step.subject, body=step.text,
            payload={**payload, "step": step.name, "enrolment_id": enrolment_id,
                     **channels.fallback(step.channel, step.to)},
            due_at=step_due_at(row.decided_at, step, request.quiet_hours),
            enrolment_id=enrolment_id, step_index=step.index, step_name=step.name,
        ))  # fmt: skip
    return out


def task_push_row(task: dict[str, Any], *, now: datetime, event: str = "created") -> DeliveryRow:
    """A task pushed to the CRM webhook: new (`created`), or as an API call left it
    (`assigned`, `completed`, `cancelled`), the payload's `task_event`.

    Its body is the push's Slack-compatible `text`: the title (plain, customer data and all)
    escaped as Slack escapes, so a customer id cannot ping @channel or post a link where the
    CRM URL is a chat hook. The payload's task and the subject keep the raw title, as data.
    """
    key = (idempotency_key("task", task["id"], task["tier_change_id"]) if event == "created"
           else idempotency_key("task", task["id"], event, task["updated_at"]))  # fmt: skip
    return DeliveryRow(
        key=key, kind="task", customer_id=task["customer_id"],
        tier_change_id=task["tier_change_id"], playbook=task["playbook"],
        audience=task["queue"], channel="webhook", recipient=None, subject=task["title"],
        body=slack_escape(task["title"]), payload={"task": task, "task_event": event},
        due_at=now,
    )  # fmt: skip
