"""The playbooks file schema (pydantic): templates, sequences, transition -> action playbooks."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from datetime import time, timedelta
from email.utils import getaddresses
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.contracts import ChangeCause, Dimension
from shared.domain.conditions import Condition
from shared.domain.playbook_templates import Scope, check_template, template_names, unknown_names

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)w)?(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?"
    r"(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$"
)
_UNITS = ("weeks", "days", "hours", "minutes", "seconds")
# Ten years: longer than any sensible step or cool-down, and `now + duration` (plus a day of
# quiet-hours slack) stays far inside what a datetime can hold.
MAX_DURATION = timedelta(days=3650)
_TOO_LONG = f"a duration must be at most {MAX_DURATION.days}d (ten years)"


_DURATION_FORMS = "write e.g. 2d, 24h, 90m, 1d12h, 1w or P2D"


def parse_duration(raw: Any) -> Any:
    """'2d', '24h', '1d12h', '90m', '0d' -> timedelta; ISO 8601 (P2D): pydantic; no numbers."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        # Pydantic reads a number as seconds: `due_in: 2` meant two days (or hours), not two
        # seconds, and nothing said so. A unit is required.
        raise ValueError(f"{raw!r} is a number without a unit; {_DURATION_FORMS}")
    if not isinstance(raw, str) or raw.strip().lstrip("+-").upper().startswith("P"):
        return raw
    text = raw.strip()
    match = _DURATION.match(text.lstrip("+-"))
    if not (match and any(match.groups())):
        raise ValueError(f"{raw!r} is not a duration; {_DURATION_FORMS}")
    parts = {unit: float(v) for unit, v in zip(_UNITS, match.groups(), strict=True) if v}
    try:
        value = timedelta(**parts)
    except OverflowError:  # beyond what a timedelta holds: far past the bound anyway
        raise ValueError(f"{raw!r} is too long; {_TOO_LONG}") from None
    return -value if text.startswith("-") else value


def _bounded(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("a duration must not be negative")
    if value > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_bounded)]
Template = Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(check_template)]


_Values = TypeVar("_Values", bound=Sequence[Any])


def _none_is_empty(raw: Any, *, empty: Any) -> Any:
    return empty if raw is None else raw


# A section with each entry commented out (`templates:` and nothing under it) is YAML's
# null: read as empty, like a section left out, rather than refused as "not a dictionary".
EmptyDict = BeforeValidator(functools.partial(_none_is_empty, empty={}))
EmptyList = BeforeValidator(functools.partial(_none_is_empty, empty=[]))


def _one_or_many(raw: Any) -> Any:
    return [raw] if isinstance(raw, str) else raw


def _distinct(values: _Values) -> _Values:
    """Refuse a list naming one value twice (`cause: [event, event]`): a slip, not a wish."""
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{str(getattr(value, 'value', value))!r} is listed twice")
        seen.add(value)
    return values


Classes = Annotated[
    tuple[Name, ...], BeforeValidator(_one_or_many), Field(min_length=1), AfterValidator(_distinct)
]
Causes = Annotated[
    tuple[ChangeCause, ...],
    BeforeValidator(_one_or_many),
    Field(min_length=1),
    AfterValidator(_distinct),
]


_CLOCK_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
_ZONED_TIME = re.compile(r"^\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
_TIME_FORMAT = 'write "HH:MM" or "HH:MM:SS", quoted, e.g. start: "21:00"'
_NO_ZONE = "a quiet-hours time takes no zone of its own; set the sequence's `timezone` instead"


def parse_local_time(raw: Any) -> time:
    """'21:00' or '21:00:30' -> a naive time of day; numbers and zoned times are refused."""
    if isinstance(raw, time):
        if raw.tzinfo is not None:
            raise ValueError(_NO_ZONE)
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        # e.g. `start: 2100`, or 1260 from a loader still reading YAML 1.1's base-60 21:00.
        raise ValueError(f"{raw!r} is a number, not a time of day; {_TIME_FORMAT}")
    text = raw.strip() if isinstance(raw, str) else ""
    if _ZONED_TIME.match(text):
        raise ValueError(f"{raw!r}: {_NO_ZONE}")
    match = _CLOCK_TIME.match(text)
    if match is None:
        raise ValueError(f"{raw!r} is not a time of day; {_TIME_FORMAT}")
    hour, minute, second = match.groups()
    return time(int(hour), int(minute), int(second or 0))


LocalTime = Annotated[time, BeforeValidator(parse_local_time)]


class Channel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"
    LOG = "log"


_MARKUP = ("{{", "{%", "{#")


def check_recipient(to: str | None, channel: Channel | None, what: str) -> str | None:
    """An alert's or step's `to`: only on e-mail (another channel has no recipient and would
    ignore it), and, when written out rather than a template, one e-mail address (one that
    is not failed every send)."""
    if to is None or channel is None:  # no channel: its own error says why
        return to
    if channel is not Channel.EMAIL:
        raise ValueError(
            f"`to` is an e-mail recipient, and {what} by {channel.value} sends no e-mail:"
            " remove it, or send by `channel: email`"
        )
    if not any(mark in to for mark in _MARKUP) and not is_one_address(to):
        raise ValueError(
            f"{to!r} is not one e-mail address: write e.g. ops@example.com, or a template"
            " such as {{ customer.email }}"
        )
    return to


def is_one_address(text: str) -> bool:
    """What the e-mail channel takes: one address (`name@domain`, a display name allowed)."""
    addresses = getaddresses([text])
    if len(addresses) != 1 or "=?" in text:
        return False
    local, at, domain = addresses[0][1].rpartition("@")
    return bool(local and at and domain) and not any(c.isspace() for c in addresses[0][1])


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Reentry(StrEnum):
    """May a customer enrol again once a previous enrolment ended?"""

    ALLOW = "allow"
    NEVER = "never"


class GoalEvent(StrEnum):
    PURCHASE = "purchase"


class PlaybookProblem(ValueError):
    """A cross-field problem, naming where it is (playbook or sequence) and the field."""

    def __init__(self, message: str, *, where: str, field: str) -> None:
        super().__init__(message)
        self.where, self.field = where, field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Message(_Model):
    """A named message template: an optional subject line and a text body (Jinja2)."""

    subject: Template | None = None
    text: Template


class _Content(_Model):
    """Either a reference to a named template or an inline subject/text."""

    template: Name | None = None
    subject: Template | None = None
    text: Template | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Any:
        if (self.template is None) == (self.text is None):
            raise ValueError("give either `template` (a name) or an inline `text`")
        if self.template is not None and self.subject is not None:
            raise ValueError("`subject` comes from the template; do not give both")
        return self


class Transition(_Model):
    """Which tier changes match: dimension, optional from/to/cause, optional condition (`if`)."""

    dimension: Dimension
    from_: Classes | None = Field(None, alias="from")
    to: Classes | None = None
    cause: Causes | None = None
    if_: Condition | None = Field(None, alias="if")

    @model_validator(mode="after")
    def _can_match(self) -> Transition:
        if self.from_ is not None and self.from_ == self.to and len(self.to) == 1:
            raise ValueError(
                f"`from` and `to` are both {self.to[0]!r}: a change always moves to another"
                " class than the one it leaves, so this matches none"
            )
        return self


class TaskAction(_Model):
    kind: Literal["task"]
    title: Template
    queue: Name
    priority: Priority = Priority.NORMAL
    due_in: Duration
    assignee: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class AlertAction(_Content):
    kind: Literal["alert"]
    channel: Channel
    audience: Name = Field(description="Who the alert is for (vip, retention, care, ...).")
    to: Template | None = Field(None, description="E-mail recipient (template).")

    @field_validator("to")
    @classmethod
    def _email_recipient(cls, to: str | None, info: ValidationInfo) -> str | None:
        return check_recipient(to, info.data.get("channel"), "an alert")


class EnrolAction(_Model):
    kind: Literal["enrol"]
    sequence: Name


Action = Annotated[TaskAction | AlertAction | EnrolAction, Field(discriminator="kind")]


class Playbook(_Model):
    """When a change matches `when`, run every action."""

    name: Name
    description: str | None = None
    when: Transition
    actions: Annotated[list[Action], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_task(self) -> Playbook:
        # Tasks are unique per customer and playbook, so two task actions would overwrite.
        if sum(isinstance(a, TaskAction) for a in self.actions) > 1:
            raise PlaybookProblem(
                "at most one task action per playbook",
                where=f"playbook {self.name!r}",
                field="actions",
            )
        return self


class Step(_Content):
    """One step of a sequence, sent `offset` after enrolment."""

    name: Name
    offset: Duration
    channel: Channel
    to: Template | None = Field(
        None, description="E-mail recipient; default the customer's e-mail."
    )

    @field_validator("to")
    @classmethod
    def _email_recipient(cls, to: str | None, info: ValidationInfo) -> str | None:
        return check_recipient(to, info.data.get("channel"), "a step")


class QuietHours(_Model):
    """Steps due inside [start, end) local time are sent at `end` instead; so is a step
    that a retry, an expired lease or a backlog brings inside them (checked when it is sent).

    `start` and `end` are wall-clock times ("21:00") in `timezone`, an IANA zone name.
    """

    start: LocalTime
    end: LocalTime
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("`start` and `end` must differ")
        return self


class ExitOn(_Model):
    """What ends an enrolment early: matching tier changes, or goal events (e.g. a purchase)."""

    changes: Annotated[list[Transition], EmptyList] = Field(default_factory=list)
    events: Annotated[list[GoalEvent], EmptyList, AfterValidator(_distinct)] = Field(
        default_factory=list
    )


class SequenceDef(_Model):
    """A durable multi-step schedule."""

    description: str | None = None
    steps: Annotated[list[Step], Field(min_length=1, max_length=100)]
    exit_on: Annotated[ExitOn, EmptyDict] = Field(default_factory=ExitOn)
    reentry: Reentry = Reentry.ALLOW
    reentry_after: Duration | None = Field(None, description="Cool-down before re-entry.")
    quiet_hours: QuietHours | None = None

    @field_validator("reentry_after")
    @classmethod
    def _reentry_allowed(cls, after: timedelta | None, info: ValidationInfo) -> timedelta | None:
        if after is not None and info.data.get("reentry") is Reentry.NEVER:
            raise ValueError(
                "`reentry: never` lets no customer enrol again, after any wait: remove"
                " `reentry_after`, or make it `reentry: allow`"
            )
        return after

    @field_validator("steps")
    @classmethod
    def _unique_steps(cls, steps: list[Step]) -> list[Step]:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError("two steps share a name")
        for earlier, later in itertools.pairwise(steps):
            # Steps go out in the order listed, each after the one before it: a later one
            # with an earlier offset would wait for it (a day-0 step listed after a day-7
            # one went out on day 7).
            if later.offset < earlier.offset:
                raise ValueError(
                    f"step {later.name!r} comes after {earlier.name!r} but has an earlier"
                    " offset: list the steps in the order of their offsets"
                )
        return steps


class PlaybooksFile(_Model):
    """The YAML document as written by people."""

    description: str | None = None
    templates: Annotated[dict[Name, Message], EmptyDict] = Field(default_factory=dict)
    sequences: Annotated[dict[Name, SequenceDef], EmptyDict] = Field(default_factory=dict)
    playbooks: Annotated[list[Playbook], EmptyList, Field(min_length=1)]

    @model_validator(mode="after")
    def _references(self) -> PlaybooksFile:
        seen: set[str] = set()
        for book in self.playbooks:
            if book.name in seen:
                raise PlaybookProblem(
                    "two playbooks share this name", where=f"playbook {book.name!r}", field="name"
                )
            seen.add(book.name)
            for i, action in enumerate(book.actions):
                self._check_action(f"playbook {book.name!r}", i, action)
        for name, sequence in self.sequences.items():
            for i, step in enumerate(sequence.steps):
                self._check_template(step.template, f"sequence {name!r}", f"steps.{i}.template")
        self._check_names()
        return self

    def _check_names(self) -> None:
        """Refuse a template naming what its context lacks (it would render as empty text):
        inline ones where they are, named ones in every place that uses them."""
        uses: dict[str, set[Scope]] = {name: set() for name in self.templates}
        for book in self.playbooks:
            for i, action in enumerate(book.actions):
                where, field = f"playbook {book.name!r}", f"actions.{i}"
                if isinstance(action, TaskAction):
                    _check_names(action.title, Scope.TASK, where, f"{field}.title")
                elif isinstance(action, AlertAction):
                    _check_content(action, Scope.ALERT, where, field, uses)
        for name, sequence in self.sequences.items():
            for i, step in enumerate(sequence.steps):
                _check_content(step, Scope.STEP, f"sequence {name!r}", f"steps.{i}", uses)
        for name, message in self.templates.items():
            # One used nowhere yet is held to what any place could give it.
            scopes: list[Scope | None] = [*sorted(uses[name])] or [None]
            for scope in scopes:
                for key in ("subject", "text"):
                    source = getattr(message, key)
                    if source is not None:
                        _check_names(source, scope, f"template {name!r}", key)

    def _check_action(
        self, book: str, index: int, action: TaskAction | AlertAction | EnrolAction
    ) -> None:
        if isinstance(action, EnrolAction) and action.sequence not in self.sequences:
            raise PlaybookProblem(
                f"unknown sequence {action.sequence!r}",
                where=book,
                field=f"actions.{index}.sequence",
            )
        if isinstance(action, AlertAction):
            self._check_template(action.template, book, f"actions.{index}.template")

    def _check_template(self, name: str | None, where: str, field: str) -> None:
        if name is not None and name not in self.templates:
            raise PlaybookProblem(f"unknown template {name!r}", where=where, field=field)


def _check_content(
    content: AlertAction | Step, scope: Scope, where: str, field: str, uses: dict[str, set[Scope]]
) -> None:
    """An alert's or a step's inline templates; the named template it uses is noted."""
    if content.template is not None:
        uses[content.template].add(scope)
    for key in ("subject", "text", "to"):
        source = getattr(content, key)
        if source is not None:
            _check_names(source, scope, where, f"{field}.{key}")


def _check_names(source: str, scope: Scope | None, where: str, field: str) -> None:
    names = template_names(scope) if scope else frozenset().union(*map(template_names, Scope))
    if problems := unknown_names(source, names):
        raise PlaybookProblem(
            f"{', '.join(problems)} ({scope or 'a template'} can use {', '.join(sorted(names))})",
            where=where,
            field=field,
        )
