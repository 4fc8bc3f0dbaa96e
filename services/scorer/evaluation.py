"""Pure scorer logic around the domain: fold a batch, re-evaluate a customer, build rows.

No I/O here: the repository loads `CustomerRecord`s, these functions return the rows
to write (`CustomerUpdate`, `ChangeRecord`), the repository writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from services.scorer import codec
from shared.contracts import AttributeValue, ChangeCause, Dimension, TierChanged
from shared.domain.changes import Decision, decide
from shared.domain.compiled import compiled_rules
from shared.domain.features import compute_features, features_to_json
from shared.domain.population import CutPoints
from shared.domain.rules import Classification, Rules, classify, next_review_at
from shared.domain.state import (
    CustomerState,
    Event,
    attributes_of,
    fold,
    new_state,
    prune,
    state_from_json,
)
from shared.ids import uuid4_texts

# Each dimension with its column name (Enum lookups are slow on a per-customer path).
_COLUMNS = tuple((d, d.value) for d in Dimension)
_DIMENSION = {d.value: d for d in Dimension}
# Never schedule a review in the past: a customer due again at once would spin the sweeper.
MIN_REVIEW_DELAY = timedelta(seconds=1)
# Review times one late review crosses one at a time; any changes beyond are decided at
# once, at now, and the customer is counted in `Outcome.cut_short`. Most review times
# change no class (a purchase leaving a window below every threshold), and a step skips the
# state's encoding, so a year's catch-up of a heavy buyer fits well inside this bound; it
# is there to bound the work one customer can cost a sweep (about 20 ms at this many).
MAX_CATCH_UP_STEPS = 1000


@dataclass(frozen=True)
class Scoring:
    """What classification depends on besides the state: the rules and the cut points."""

    rules: Rules
    cut_points: CutPoints | None = None


@dataclass
class CustomerRecord:
    """A customer row loaded for update (state None: a row created by this transaction).

    `version` is the row's write count when it was read; saving the record makes it
    `version + 1` (see services/scorer/state_cache.py). `due_at` is when its stored classes
    may stop being current (its review time; None when not loaded or never): evaluating it
    later first catches up the time-driven changes due since (`fold_batch`, `evaluate_all`).
    """

    customer_id: str
    state: CustomerState
    classes: dict[Dimension, str] | None
    class_since: dict[Dimension, datetime]
    version: int = 0
    due_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CustomerRecord:
        """Decode a `scorer.customer` row (JSON columns already parsed)."""
        customer_id = str(row["customer_id"])
        raw_state = row.get("state")
        state = state_from_json(raw_state) if raw_state else new_state(customer_id)
        classes = {d: row[c] for d, c in _COLUMNS if row.get(c) is not None}
        since = {
            _DIMENSION[d]: datetime.fromisoformat(at)
            for d, at in (row.get("class_since") or {}).items()
        }
        complete = classes if len(classes) == len(_COLUMNS) else None
        return cls(customer_id, state, complete, since, row.get("version") or 0)

    @classmethod
    def empty(cls, customer_id: str, version: int) -> CustomerRecord:
        """A customer never classified (its row was just created as a placeholder)."""
        return cls(customer_id, new_state(customer_id), None, {}, version)


@dataclass(slots=True)  # not frozen, for speed: see Classification (shared/domain/rules.py)
class CustomerUpdate:
    """The new values of one customer row."""

    customer_id: str
    state_text: str  # the state's JSON (codec.dumps_state)
    classes: dict[Dimension, str]
    classification: Classification
    class_since: dict[Dimension, datetime]
    cut_points_version: str | None
    next_review_at: datetime | None
    updated_at: datetime

    def as_row(self) -> tuple[Any, ...]:
        """Per-customer column values in `store.save_customers` order (JSON as text)."""
        c = self.classification
        since = {d.value: at for d, at in self.class_since.items()}  # the encoder writes ISO
        return (
            self.customer_id, self.state_text, self.classes[Dimension.VALUE_TIER],
            self.classes[Dimension.ACTIVITY_LEVEL], self.classes[Dimension.LIFECYCLE_STAGE],
            c.r_score, c.f_score, c.m_score, _json(since), self.next_review_at,
        )  # fmt: skip

    def shared_values(self) -> tuple[str, str | None, datetime]:
        """The values one evaluation pass gives every customer: rules, cut points, time."""
        return (self.classification.rules_version, self.cut_points_version, self.updated_at)


@dataclass(slots=True)  # not frozen, for speed: see Classification (shared/domain/rules.py)
class ChangeRecord:
    """One tier change as stored in the outbox and published as `TierChanged`."""

    id: str
    customer_id: str
    dimension: Dimension
    from_class: str | None
    to_class: str
    cause: ChangeCause
    rule: str
    features: dict[str, Any]
    attributes: dict[str, AttributeValue]
    rules_version: str
    occurred_at: datetime
    emitted_at: datetime
    traceparent: str | None = None  # W3C trace context of the triggering event, if it had one

    def as_row(self) -> tuple[Any, ...]:
        """Column values in `store.insert_changes` order (JSON as text)."""
        return (
            self.id, self.customer_id, self.dimension.value, self.from_class, self.to_class,
            self.cause.value, self.rule, _json(self.features), _json(self.attributes),
            self.rules_version, self.occurred_at, self.emitted_at, self.traceparent,
        )  # fmt: skip

    def to_event(self) -> TierChanged:
        """The wire event."""
        return TierChanged.model_validate(
            {
                "id": self.id, "customer_id": self.customer_id, "dimension": self.dimension,
                "from": self.from_class, "to": self.to_class, "cause": self.cause,
                "rule": self.rule, "features": self.features, "rules_version": self.rules_version,
                "occurred_at": self.occurred_at, "emitted_at": self.emitted_at,
                "attributes": self.attributes,
            }
        )  # fmt: skip


class Evaluated(NamedTuple):
    """One customer's evaluation: its row, its changes, and whether a catch-up before it
    stopped at MAX_CATCH_UP_STEPS (the changes left were then dated at the evaluation)."""

    update: CustomerUpdate
    changes: list[ChangeRecord]
    cut_short: bool = False


@dataclass(frozen=True)
class Outcome:
    """What to write after evaluating some customers."""

    updates: list[CustomerUpdate]
    changes: list[ChangeRecord]
    # Customers whose evaluation raised (id → error), left as they were: a pass over many
    # customers (sweep, rules migration, re-bucketing) must not stall on one of them.
    failed: dict[str, str] = field(default_factory=dict)
    # Customers whose catch-up stopped at MAX_CATCH_UP_STEPS (see `Evaluated`).
    cut_short: list[str] = field(default_factory=list)


def evaluate(
    record: CustomerRecord,
    scoring: Scoring,
    *,
    now: datetime,
    cause: ChangeCause,
    occurred_at: datetime,
    emitted_at: datetime | None = None,
) -> tuple[CustomerUpdate, list[ChangeRecord]]:
    """Re-classify one customer at `now`; the changes carry `cause` and `occurred_at`, and
    `emitted_at` (default `now`).

    Their trace context is left unset: `fold_batch` adds the trigger's.
    """
    step = _classify_at(record, scoring, now=now)
    decision = step.decision
    update = CustomerUpdate(
        record.customer_id, codec.dumps_state(record.state), decision.classes,
        step.classification, decision.class_since,
        scoring.cut_points.version if scoring.cut_points else None, step.review, now,
    )  # fmt: skip
    changes = _change_records(record.customer_id, step, scoring.rules, cause, occurred_at,
                              emitted_at or now)  # fmt: skip
    return update, changes


class _Step(NamedTuple):
    """A customer classified at one instant: what `evaluate` writes, but the state's text."""

    decision: Decision
    classification: Classification
    attributes: dict[str, AttributeValue]
    review: datetime | None


def _classify_at(record: CustomerRecord, scoring: Scoring, *, now: datetime) -> _Step:
    state, rules = record.state, scoring.rules
    prune(state, now=now)
    attributes = attributes_of(state)
    features = compute_features(state, now=now, plan=compiled_rules(rules).features)
    classification = classify(features, attributes, rules, cut_points=scoring.cut_points)
    decision = decide(record.classes, record.class_since, classification, rules, now=now)
    review = next_review_at(state, rules, now=now, cut_points=scoring.cut_points)
    review = _earliest(review, decision.hold_until)
    if review is not None and review <= now:
        review = now + MIN_REVIEW_DELAY
    return _Step(decision, classification, attributes, review)


def _change_records(
    customer_id: str,
    step: _Step,
    rules: Rules,
    cause: ChangeCause,
    occurred_at: datetime,
    emitted_at: datetime,
) -> list[ChangeRecord]:
    made = step.decision.changes
    if not made:  # most evaluations change nothing
        return []
    return [
        ChangeRecord(
            change_id, customer_id, c.dimension, c.from_, c.to, cause, c.rule,
            features_to_json(c.features), step.attributes, rules.version, occurred_at,
            emitted_at,
        )
        for change_id, c in zip(uuid4_texts(len(made)), made, strict=True)
    ]  # fmt: skip


def saved_records(records: Iterable[CustomerRecord], outcome: Outcome) -> list[CustomerRecord]:
    """The records as `outcome` left them once committed: new classes and review time,
    version + 1.

    Valid only after `outcome` was evaluated from `records` (their states are the folded
    ones) and its updates were written.
    """
    by_id = {r.customer_id: r for r in records}
    saved = []
    for update in outcome.updates:
        record = by_id[update.customer_id]
        saved.append(
            CustomerRecord(
                record.customer_id, record.state, dict(update.classes),
                dict(update.class_since), record.version + 1, update.next_review_at,
            )
        )  # fmt: skip
    return saved


def evaluate_all(
    records: Iterable[CustomerRecord],
    scoring: Scoring,
    *,
    now: datetime,
    cause: ChangeCause,
    scored_with: Mapping[str, Scoring] | None = None,
) -> Outcome:
    """Re-evaluate customers because rules or cut points changed (occurred_at = now).

    A customer whose review time has passed (`due_at`) first crosses the boundaries due
    before `now` one by one (cause `time`, as `catch_up`): the sweep that would have emitted
    them may not have reached it yet (a backlog, partitions held: shared/partition_scope.py).
    It crosses them with the scoring it was classified with, `scored_with[customer_id]`
    (re-bucketing knows the old cut points), else with `scoring` (the old rules are not
    kept: as when the sweep reaches such a customer first, what the new rules change at
    the first boundary then carries cause `time`).
    """
    before = scored_with or {}
    return _isolated(
        (record.customer_id,
         partial(_reevaluate, record, scoring, before.get(record.customer_id, scoring),
                 now=now, cause=cause))
        for record in records
    )  # fmt: skip


def _reevaluate(
    record: CustomerRecord,
    scoring: Scoring,
    earlier: Scoring,
    *,
    now: datetime,
    cause: ChangeCause,
) -> Evaluated:
    caught: list[ChangeRecord] = []
    cut_short = False
    if record.due_at is not None and record.due_at < now:
        record, caught, cut_short = _cross_boundaries(
            record, earlier, due_at=record.due_at, until=now, emitted_at=now
        )
    update, changes = evaluate(record, scoring, now=now, cause=cause, occurred_at=now)
    return Evaluated(update, caught + changes, cut_short)


def catch_up_all(
    due: Iterable[tuple[CustomerRecord, datetime]], scoring: Scoring, *, now: datetime
) -> Outcome:
    """Re-evaluate customers whose review time came (cause `time`); see `catch_up`."""
    return _isolated(
        (record.customer_id, partial(catch_up, record, scoring, due_at=at, now=now))
        for record, at in due
    )


def _isolated(evaluations: Iterable[tuple[str, Callable[[], Evaluated]]]) -> Outcome:
    """Each customer's evaluation; one that raises goes to `Outcome.failed`, not up."""
    outcome = Outcome([], [])
    for customer_id, evaluate_one in evaluations:
        try:
            update, changes, cut_short = evaluate_one()
        except Exception as exc:  # a domain bug or an extreme value: isolate this customer
            outcome.failed[customer_id] = failure_text(exc)
            continue
        outcome.updates.append(update)
        outcome.changes.extend(changes)
        if cut_short:
            outcome.cut_short.append(customer_id)
    return outcome


def failure_text(exc: Exception) -> str:
    """What a failed evaluation logs and dead-letters."""
    return f"{type(exc).__name__}: {exc}"


def catch_up(
    record: CustomerRecord,
    scoring: Scoring,
    *,
    due_at: datetime,
    now: datetime,
    emitted_at: datetime | None = None,
) -> Evaluated:
    """Re-classify a customer whose review fell due at `due_at`, review time by review time
    up to `now`: each change carries the moment it happened as `occurred_at` (the review
    time is the first instant a threshold is passed), and a class held in between is not
    skipped, even when the sweep comes late (the scorer was down). All are emitted at
    `emitted_at` (default `now`; the consumer catches a customer up to its next event's
    time, later).
    """
    emitted = emitted_at or now
    record, changes, cut_short = _cross_boundaries(
        record, scoring, due_at=due_at, until=now, emitted_at=emitted
    )
    # At `now` itself: the row's features, scores and next review as of now (and any change
    # left after MAX_CATCH_UP_STEPS review times).
    update, made = evaluate(
        record, scoring, now=now, cause=ChangeCause.TIME, occurred_at=now, emitted_at=emitted
    )
    return Evaluated(update, changes + made, cut_short)


def _cross_boundaries(
    record: CustomerRecord,
    scoring: Scoring,
    *,
    due_at: datetime,
    until: datetime,
    emitted_at: datetime,
) -> tuple[CustomerRecord, list[ChangeRecord], bool]:
    """The record with the classes it reached at each review time from `due_at` to before
    `until`, the changes made there (cause `time`), and whether it stopped after
    MAX_CATCH_UP_STEPS review times with some still before `until`."""
    changes: list[ChangeRecord] = []
    at: datetime | None = due_at
    for _ in range(MAX_CATCH_UP_STEPS):
        if at is None or at >= until:
            return record, changes, False
        record, made = _time_step(record, scoring, at=at, emitted_at=emitted_at)
        changes += made
        at = record.due_at
    return record, changes, at is not None and at < until


def _time_step(
    record: CustomerRecord, scoring: Scoring, *, at: datetime, emitted_at: datetime
) -> tuple[CustomerRecord, list[ChangeRecord]]:
    """`record` (same state and row version) with the classes and review time it has at
    `at`, and the changes made there (cause `time`, dated `at`); the state is not encoded."""
    step = _classify_at(record, scoring, now=at)
    made = _change_records(record.customer_id, step, scoring.rules, ChangeCause.TIME, at,
                           emitted_at)  # fmt: skip
    decision = step.decision
    reclassified = CustomerRecord(
        record.customer_id, record.state, dict(decision.classes), dict(decision.class_since),
        record.version, step.review,
    )  # fmt: skip
    return reclassified, made


class CustomerFailed(Exception):
    """Folding or classifying one customer's events raised: quarantine those events."""

    def __init__(self, customer_id: str, error: str) -> None:
        super().__init__(f"customer {customer_id!r}: {error}")
        self.customer_id, self.error = customer_id, error


def fold_batch(
    records: Iterable[CustomerRecord],
    events: Iterable[Event],
    scoring: Scoring,
    *,
    now: datetime,
    trace_of: Callable[[Event], str | None] = lambda _: None,
) -> Outcome:
    """Fold distinct events into their customers and re-classify each (cause `event`).

    A customer's changes carry the time and trace context (`trace_of`) of its latest event.
    One whose review time (`due_at`) passed before its earliest event here is first caught
    up to that event's time (`catch_up`, cause `time`): the sweep holds customers of lagging
    partitions (shared/partition_scope.py), so after an outage or in a backlog the consumer
    reaches them first, and the changes due in between would otherwise never be emitted.
    Raises CustomerFailed naming the customer when the domain rejects its events, so the
    caller can dead-letter them instead of retrying a batch that can never pass.
    """
    by_id = {r.customer_id: r for r in records}
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.customer_id, []).append(event)
    outcome = Outcome([], [])
    for customer_id, mine in grouped.items():
        record = by_id[customer_id]
        caught: list[ChangeRecord] = []
        try:
            # Most customers' review time is still ahead: they pay this one comparison.
            if (due_at := record.due_at) is not None and due_at <= now:
                record, caught, cut_short = _catch_up_before(
                    record, mine, scoring, due_at=due_at, now=now
                )
                if cut_short:
                    outcome.cut_short.append(customer_id)
            for event in mine:
                fold(record.state, event, now=now)
            trigger = mine[0] if len(mine) == 1 else max(mine, key=_time_order)
            update, changes = evaluate(
                record, scoring, now=now, cause=ChangeCause.EVENT,
                occurred_at=trigger.occurred_at,
            )  # fmt: skip
            if changes:  # most evaluations change nothing: read the trace only when needed
                traceparent = trace_of(trigger)
                for change in changes:
                    change.traceparent = traceparent
        except Exception as exc:  # a domain bug or an extreme value: isolate this customer
            raise CustomerFailed(customer_id, failure_text(exc)) from exc
        outcome.updates.append(update)
        outcome.changes.extend(caught)
        outcome.changes.extend(changes)
    return outcome


def _catch_up_before(
    record: CustomerRecord,
    events: list[Event],
    scoring: Scoring,
    *,
    due_at: datetime,
    now: datetime,
) -> tuple[CustomerRecord, list[ChangeRecord], bool]:
    """`record` caught up from its review time `due_at` to its earliest event in `events`
    newer than everything it has folded (or to `now`, when none is, or it is dated later),
    as `catch_up` does; the changes are emitted `now`. The flag: cut short (`Evaluated`).

    A newer event dated before `due_at` stops the catch-up: it came in order, read late only
    because the scorer was behind (sweeps wait for such a backlog), so nothing was due. An
    event no newer than the customer's latest activity came out of order, after the state
    the sweep would have caught up without it: the consumer does what the sweep would have
    done, and the event then counts as of now.
    """
    latest = record.state.last_activity_at
    until = now
    for event in events:
        at = event.occurred_at
        if at < until and (latest is None or at > latest):
            until = at
    if due_at >= until:  # an event at or before the review time: nothing was due before it
        return record, [], False
    record, caught, cut_short = _cross_boundaries(
        record, scoring, due_at=due_at, until=until, emitted_at=now
    )
    # At `until` itself, as `catch_up` ends (its row is not written: the events come next).
    record, made = _time_step(record, scoring, at=until, emitted_at=now)
    return record, caught + made, cut_short


def distinct_events(events: Iterable[Event]) -> list[Event]:
    """The first occurrence of each event_id (later copies in one batch are redeliveries)."""
    seen: dict[str, Event] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return list(seen.values())


def _time_order(event: Event) -> tuple[datetime, str]:
    return (event.occurred_at, event.event_id)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return b if a is None else a
    return min(a, b)


def _json(value: Any) -> str:
    return codec.dumps(value)
