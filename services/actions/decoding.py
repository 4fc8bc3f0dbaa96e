"""Decoding consumed records: tier changes are parsed and planned, purchases become goal
events, and anything that cannot be parsed or stored is poison (for the DLQ).

A template that fails on a change's data is not poison: planning leaves out only that action
and reports it in the plan (`Plan.failures`), so the change's exits and other actions apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeAlias

from pydantic import ValidationError

from services.actions.batch import GoalHit, PlannedChange
from shared.contracts import PurchaseMade, TierChanged, exists_in_utc, parse_event
from shared.dead_letters import Poison
from shared.domain.playbook_requests import task_due_at
from shared.domain.playbooks import (
    ActionRequest,
    EnrolRequest,
    Plan,
    Playbooks,
    TaskRequest,
    plan_actions,
    step_due_at,
)
from shared.kafka import CHANGE_SEQ_HEADER, header
from shared.topics import Topics
from shared.tracing import SpanKind, Tracer

Record: TypeAlias = Any  # aiokafka's ConsumerRecord (the library ships no types)


@dataclass
class Decoded:
    changes: list[PlannedChange] = field(default_factory=list)
    goals: list[GoalHit] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    ignored: int = 0


def decode(
    records: Iterable[Record], topics: Topics, playbooks: Playbooks, tracer: Tracer | None = None
) -> Decoded:
    """Parse and plan each record; what cannot be parsed or stored is poison."""
    out = Decoded()
    for record in records:
        try:
            if record.topic == topics.tier_changed:
                change = TierChanged.model_validate_json(record.value)
                _require_storable(change.model_dump())
                plan = _plan(change, record, playbooks, tracer)
                _require_storable_due_times(change, plan.requests)
                out.changes.append(PlannedChange(change, plan, seq=_seq(record)))
            else:
                _decode_purchase(record, out)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
            out.poison.append(Poison(record, text or str(exc)))
        except Exception as exc:  # bad bytes, an unexpected event type, ...
            out.poison.append(Poison(record, f"{type(exc).__name__}: {exc}"))
    return out


def _seq(record: Record) -> int | None:
    """The change's seq from its header (None: a record without one); a header that is not
    a whole number makes the record poison."""
    text = header(record.headers, CHANGE_SEQ_HEADER)
    return None if text is None else int(text)


def _plan(change: TierChanged, record: Record, playbooks: Playbooks, tracer: Tracer | None) -> Plan:
    """Plan one change; with tracing on, in a span continuing the trace of the record."""
    if tracer is None or not tracer.enabled:
        return plan_actions(change, playbooks)
    attributes = {
        "tierstream.tier_change_id": change.id, "messaging.destination.name": record.topic,
        "messaging.kafka.destination.partition": record.partition,
        "messaging.kafka.message.offset": record.offset,
    }  # fmt: skip
    with tracer.span("actions.plan", parent=record.headers, kind=SpanKind.CONSUMER,
                     attributes=attributes):  # fmt: skip
        return plan_actions(change, playbooks)


def _decode_purchase(record: Record, out: Decoded) -> None:
    event = parse_event(record.value)
    if not isinstance(event, PurchaseMade):
        raise ValueError(f"a {event.type} event on the purchases topic")
    _require_storable(event.customer_id)
    if event.refund_of is None:  # a refund is not "bought again"
        out.goals.append(GoalHit(event.customer_id, event.occurred_at, event.event_id))
    else:
        out.ignored += 1


def _require_storable(value: Any) -> None:
    """Refuse what Postgres would refuse, so one record cannot stall its partition forever:
    a NUL character in any string, a timestamp without a time zone or outside years 1-9999
    in UTC, NaN or infinity."""
    match value:
        case str() if "\x00" in value:
            raise ValueError("a text value contains a NUL character")
        case datetime() if value.tzinfo is None:
            raise ValueError("a timestamp has no time zone")
        case datetime() if not exists_in_utc(value):
            raise ValueError("a timestamp lies outside years 1-9999 in UTC")
        case float() if not math.isfinite(value):
            raise ValueError("a number is NaN or infinite (JSON in Postgres cannot hold it)")
        case dict():
            for key, item in value.items():
                _require_storable(key)
                _require_storable(item)
        case list() | tuple():
            for item in value:
                _require_storable(item)


def _require_storable_due_times(change: TierChanged, requests: Iterable[ActionRequest]) -> None:
    """Refuse a change whose task or sequence steps would fall due outside years 1-9999 in UTC
    (e.g. emitted in 9999): applying it would raise OverflowError, or Postgres refuse the time,
    in every retry. Computed by the functions the effects use, from the same decision time."""
    for request in requests:
        match request:
            case TaskRequest():
                due = partial(task_due_at, change.emitted_at, request)
                _require_due(f"the task of playbook {request.playbook}", due)
            case EnrolRequest(steps=steps, quiet_hours=quiet):
                for step in steps:
                    due = partial(step_due_at, change.emitted_at, step, quiet)
                    _require_due(f"step {step.name} of sequence {request.sequence}", due)


def _require_due(what: str, due_at: Callable[[], datetime]) -> None:
    try:
        storable = exists_in_utc(due_at())
    except OverflowError:  # the arithmetic itself left Python's calendar
        storable = False
    if not storable:
        raise ValueError(f"{what} would fall due outside years 1-9999 in UTC")
