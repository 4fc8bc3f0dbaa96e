"""What planning produces: action requests and failures (pure data), and when steps fall due."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.domain.playbook_model import Channel, Priority, QuietHours, Reentry, SequenceDef

QUIET_HOURS_SLACK = timedelta(days=1)  # quiet hours defer a step by less than a day


@dataclass(frozen=True)
class TaskRequest:
    """Open (or refresh) the customer's task of this playbook."""

    playbook: str
    title: str
    queue: str
    priority: Priority
    due_in: timedelta
    assignee: str | None
    kind: str = "task"


@dataclass(frozen=True)
class AlertRequest:
    """Send one alert through a channel; `to` is an e-mail recipient when known."""

    playbook: str
    action: int
    channel: Channel
    audience: str
    to: str | None
    subject: str
    text: str
    kind: str = "alert"


@dataclass(frozen=True)
class PlannedStep:
    """One rendered step of an enrolment, due `offset` after it starts."""

    index: int
    name: str
    offset: timedelta
    channel: Channel
    to: str | None
    subject: str
    text: str


@dataclass(frozen=True)
class EnrolRequest:
    """Enrol the customer in a sequence (unless an enrolment is active or re-entry forbids it)."""

    playbook: str
    sequence: str
    steps: tuple[PlannedStep, ...]
    reentry: Reentry
    reentry_after: timedelta | None
    quiet_hours: QuietHours | None
    goal_events: tuple[str, ...]
    kind: str = "enrol"


@dataclass(frozen=True)
class ExitRequest:
    """End the customer's active enrolment in a sequence and cancel its remaining steps."""

    sequence: str
    reason: str
    kind: str = "exit"


ActionRequest = TaskRequest | AlertRequest | EnrolRequest | ExitRequest


@dataclass(frozen=True)
class ActionFailure:
    """An action whose templates failed on one change's data.

    The alert or enrolment is left out of the plan; a task is still planned, with a fallback
    title (`fallback`), because the title is all that failed and the task itself is the point.
    """

    playbook: str
    action: int  # its index in the playbook's actions
    kind: str
    error: str
    fallback: bool = False


@dataclass(frozen=True)
class Plan:
    """What a tier change calls for, and the actions that could not be planned on its data."""

    requests: list[ActionRequest]
    failures: list[ActionFailure]


def task_due_at(decided_at: datetime, task: TaskRequest) -> datetime:
    """When a task is due: `due_in` after the tier change was decided (not when consumed)."""
    return decided_at + task.due_in


def step_due_at(enrolled_at: datetime, step: PlannedStep, quiet: QuietHours | None) -> datetime:
    """When a step is due: its offset after enrolment, moved past quiet hours if needed."""
    due = enrolled_at + step.offset
    return due if quiet is None else defer_past_quiet_hours(due, quiet)


def defer_past_quiet_hours(at: datetime, quiet: QuietHours) -> datetime:
    """`at`, or the end of the quiet period it falls into (local time of the sequence)."""
    zone = ZoneInfo(quiet.timezone)
    local = at.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    wraps = quiet.start > quiet.end  # e.g. 21:00-08:00 spans midnight
    inside = (
        (clock >= quiet.start or clock < quiet.end) if wraps else quiet.start <= clock < quiet.end
    )
    if not inside:
        return at
    day = local.date() if clock < quiet.end else local.date() + timedelta(days=1)
    # The first time the local clock shows the end after `at`. On the night clocks go back
    # the end's wall time may come twice, and the first one may be behind `at` (a step
    # claimed in the repeated hour would be put back to the past, claimed again at once,
    # and so on till the hour was over).
    ends = (
        _first_instant_showing(datetime.combine(d, quiet.end), zone, fold)
        for d in (day, day + timedelta(days=1))
        for fold in (0, 1)
    )
    return min(end for end in ends if end > at)


def _first_instant_showing(wall: datetime, zone: ZoneInfo, fold: int) -> datetime:
    """The UTC instant the local clock shows naive `wall` (the `fold`th time, when it comes
    twice), or, when clocks go forward over it, the instant they jump past it: Python puts
    such a wall time an hour early or late, and the early one is still inside quiet hours."""
    at = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
    if at.astimezone(zone).replace(tzinfo=None) == wall:
        return at
    # In a gap: fold 0 reads it with the offset before the jump (after the jump instant),
    # fold 1 with the one after (before it). Bisect between them for the jump, in seconds.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def quiet_hours_record(quiet: QuietHours) -> dict[str, str]:
    """A step's quiet hours as JSON, stored with the step so the send-time check does not
    depend on whichever playbooks are loaded when it falls due."""
    return quiet.model_dump(mode="json")


def quiet_until(now: datetime, record: Mapping[str, str] | None) -> datetime | None:
    """When a step claimed at `now` may go out, if `now` is inside its quiet hours (a retry,
    an expired lease or a backlog can bring a step due before quiet hours into them)."""
    if record is None:
        return None
    resume = defer_past_quiet_hours(now, QuietHours.model_validate(record))
    return resume if resume != now else None


def longest_sequence(sequences: Mapping[str, SequenceDef]) -> timedelta:
    """The latest a step of any sequence can fall due after enrolment (0 without sequences)."""
    spans = [
        max(step.offset for step in sequence.steps)
        + (QUIET_HOURS_SLACK if sequence.quiet_hours else timedelta(0))
        for sequence in sequences.values()
    ]
    return max(spans, default=timedelta(0))
