"""Playbooks: which tier changes call for which actions. Loading, validation and pure planning.

`plan_actions(change, playbooks)` is the whole decision: it reads no clock and does no I/O;
the actions service turns its requests into rows (tasks, deliveries, enrolments) in one
transaction. Each action is planned on its own: a template that fails on one change's data
costs only its action, never the change's sequence exits or the other actions.
"""

from __future__ import annotations

import ast
import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.contracts import Dimension, TierChanged
from shared.domain.compiled import carried_features
from shared.domain.conditions import TAG_PREFIX, evaluate, leaves
from shared.domain.documents import content_version, line_of, read_document, yaml_mapping
from shared.domain.playbook_model import (
    AlertAction,
    Channel,
    EnrolAction,
    Message,
    Playbook,
    PlaybookProblem,
    PlaybooksFile,
    Priority,
    Reentry,
    SequenceDef,
    Step,
    TaskAction,
    Transition,
)
from shared.domain.playbook_requests import (
    ActionFailure,
    ActionRequest,
    AlertRequest,
    EnrolRequest,
    ExitRequest,
    Plan,
    PlannedStep,
    TaskRequest,
    defer_past_quiet_hours,
    longest_sequence,
    step_due_at,
)
from shared.domain.playbook_templates import (
    Escaping,
    Scope,
    TemplateFailed,
    change_context,
    read_features,
    render_body,
    render_plain,
    scoped,
)
from shared.domain.rules_model import Rules

__all__ = [
    "ActionFailure",
    "ActionRequest",
    "AlertRequest",
    "Channel",
    "EnrolRequest",
    "ExitRequest",
    "Plan",
    "PlannedStep",
    "Playbooks",
    "PlaybooksError",
    "Priority",
    "Reentry",
    "TaskRequest",
    "TemplateFailed",
    "check_against_rules",
    "check_classes",
    "check_conditions",
    "check_playbooks",
    "check_template_features",
    "default_playbooks_path",
    "defer_past_quiet_hours",
    "load_playbooks",
    "longest_sequence",
    "parse_playbooks",
    "plan_actions",
    "plan_goal_exits",
    "step_due_at",
]

DEFAULT_RECIPIENT = "{{ customer.email }}"
FALLBACK_TITLE_CHARS = 500  # a task title that names a template failure, error included


class PlaybooksError(ValueError):
    """An invalid playbooks file; the message names the file, the playbook and the field."""

    def __init__(
        self, message: str, *, source: str, where: str | None = None, field: str = "",
        line: int | None = None,
    ) -> None:  # fmt: skip
        place = f"{where}, " if where else ""
        at = f"{source}:{line}" if line else source  # file:line, as editors read it
        super().__init__(f"{at}: {place}field {field or '(file)'}: {message}")
        self.source, self.where, self.field, self.line = source, where, field, line


class Playbooks(PlaybooksFile):
    """A validated playbooks file with its content-hash version and where it came from."""

    version: str
    source: str

    def message(self, content: AlertAction | Step) -> Message:
        """The subject/text of an alert or step, inline or from the named template."""
        if content.template is not None:
            return self.templates[content.template]
        return Message(subject=content.subject, text=content.text or "")


# --- loading -----------------------------------------------------------------------------------


def default_playbooks_path() -> Path:
    """The shipped playbooks file implementing the product brief's playbook table."""
    return Path(__file__).with_name("default_playbooks.yaml")


def load_playbooks(path: str | Path) -> Playbooks:
    """Read and validate a playbooks file (raises PlaybooksError)."""
    text = read_document(path, fail=lambda reason: PlaybooksError(reason, source=str(path)))
    return parse_playbooks(text, source=str(path))


def check_playbooks(path: str | Path, rules: Rules) -> str:
    """Validate a file, its classes against `rules`', and summarise it in one line (raises
    PlaybooksError)."""
    books = load_playbooks(path)
    check_against_rules(books, rules)
    return (
        f"{path}: valid (version {books.version}, {len(books.playbooks)} playbooks, "
        f"{len(books.sequences)} sequences, {len(books.templates)} templates; "
        f"classes of {rules.source})"
    )


def check_classes(
    playbooks: Playbooks, classes: Mapping[Dimension, Sequence[str]], *, declared_by: str
) -> None:
    """Refuse a `from` or `to` naming a class its dimension does not declare (`classes`, from
    the rules file `declared_by`): a change never carries one, so a misspelt class (goldd) or
    one of another dimension (value_tier to at_risk) silently never matched."""
    for where, field, transition in _transitions(playbooks):
        declared = classes[transition.dimension]
        for key, named in (("from", transition.from_ or ()), ("to", transition.to or ())):
            for index, name in enumerate(named):
                if name in declared:
                    continue
                message = (
                    f"{name!r} is not a {transition.dimension.value} class of {declared_by}"
                    f" (it declares {', '.join(declared)})"
                )
                place = f"{field}.{key}" + (f".{index}" if len(named) > 1 else "")
                raise PlaybooksError(message, source=playbooks.source, where=where, field=place)


def check_against_rules(playbooks: Playbooks, rules: Rules) -> None:
    """Everything the playbooks expect of the changes the rules make: their classes
    (`check_classes`) and the features their conditions and templates read
    (`check_conditions`, `check_template_features`)."""
    check_classes(playbooks, rules.declared_classes(), declared_by=rules.source)
    check_conditions(playbooks, rules)
    check_template_features(playbooks, rules)


def check_conditions(playbooks: Playbooks, rules: Rules) -> None:
    """Refuse an `if` on a feature that no change its transition matches carries: a change
    carries only the features the rule that decided it read (a gold change of the shipped
    rules: m_score, f_score, days_since_last_purchase), so `spend_365d gt 1000` on it was
    always false and the playbook silently never fired."""
    for where, field, transition in _transitions(playbooks):
        if transition.if_ is None:
            continue
        available = _carried(rules, transition)
        for leaf in leaves(transition.if_):
            if leaf.feature is not None and leaf.feature not in available:
                message = _not_carried(leaf.feature, transition, available, rules)
                raise PlaybooksError(
                    message, source=playbooks.source, where=where, field=f"{field}.if"
                )


def check_template_features(playbooks: Playbooks, rules: Rules) -> None:
    """Refuse a template reading a feature no change its playbook acts on carries, as
    `check_conditions` does an `if`: `{{ features.spend_365d }}` on a gold change rendered
    as empty text. Each template is checked for every playbook whose actions render it (a
    sequence's steps for each playbook enrolling in it)."""
    for book in playbooks.playbooks:
        available = _carried(rules, book.when)
        for where, field, source in _rendered(playbooks, book):
            for feature in read_features(source):
                if feature not in available:
                    message = _not_carried(feature, book.when, available, rules)
                    if where != f"playbook {book.name!r}":  # a sequence's, or a named one
                        message += f"; playbook {book.name!r} renders it"
                    raise PlaybooksError(message, source=playbooks.source, where=where, field=field)


def _carried(rules: Rules, transition: Transition) -> frozenset[str]:
    """The features some change matching `transition` carries."""
    carried = carried_features(rules, transition.dimension)
    return frozenset().union(*(carried[name] for name in transition.to or carried))


def _not_carried(
    feature: str, transition: Transition, available: frozenset[str], rules: Rules
) -> str:
    to = f" to {', '.join(transition.to)}" if transition.to else ""
    return (
        f"feature {feature!r} is in no {transition.dimension.value} change{to} of"
        f" {rules.source}: a change carries only what the rule that decided it read"
        f" ({', '.join(sorted(available)) or 'nothing'})"
    )


def _rendered(playbooks: Playbooks, book: Playbook) -> Iterator[tuple[str, str, str]]:
    """Every template `book`'s actions render, as (where it is written, field, source)."""
    for index, action in enumerate(book.actions):
        field = f"actions.{index}"
        match action:
            case TaskAction():
                yield f"playbook {book.name!r}", f"{field}.title", action.title
            case AlertAction():
                yield from _content(playbooks, action, f"playbook {book.name!r}", field)
            case EnrolAction():
                where = f"sequence {action.sequence!r}"
                for step_index, step in enumerate(playbooks.sequences[action.sequence].steps):
                    yield from _content(playbooks, step, where, f"steps.{step_index}")


def _content(
    playbooks: Playbooks, content: AlertAction | Step, where: str, field: str
) -> Iterator[tuple[str, str, str]]:
    """An alert's or step's templates: its recipient, and its inline or named message."""
    if content.to is not None:
        yield where, f"{field}.to", content.to
    if content.template is not None:
        where, field = f"template {content.template!r}", ""
    message = playbooks.message(content)
    for key, source in (("subject", message.subject), ("text", message.text)):
        if source is not None:
            yield where, f"{field}.{key}".lstrip("."), source


def _transitions(playbooks: Playbooks) -> Iterator[tuple[str, str, Transition]]:
    """Every transition pattern: each playbook's `when` and each sequence's exit changes."""
    for book in playbooks.playbooks:
        yield f"playbook {book.name!r}", "when", book.when
    for name, sequence in playbooks.sequences.items():
        for index, transition in enumerate(sequence.exit_on.changes):
            yield f"sequence {name!r}", f"exit_on.changes.{index}", transition


def parse_playbooks(text: str, *, source: str) -> Playbooks:
    """Validate playbooks YAML; the version is a hash of its content (comments aside)."""
    fail = functools.partial(PlaybooksError, source=source)
    data = yaml_mapping(text, fail=fail, name=source)
    try:
        parsed = PlaybooksFile.model_validate(data)
    except ValidationError as exc:
        raise _playbooks_error(exc, data, source, text) from exc
    version = content_version(parsed)
    return Playbooks.model_validate(
        {**parsed.model_dump(by_alias=True), "version": version, "source": source}
    )


def _playbooks_error(
    exc: ValidationError, data: dict[str, Any], source: str, text: str
) -> PlaybooksError:
    error = exc.errors()[0]
    loc = [p for p in error["loc"] if not str(p).startswith(TAG_PREFIX) and p not in _KINDS]
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, PlaybookProblem):
        path = _problem_path(problem.where, problem.field, data) or loc
        return PlaybooksError(str(problem), source=source, where=problem.where,
                              field=problem.field, line=line_of(text, path))  # fmt: skip
    where, rest = _where(loc, data)
    message = str(error["msg"]).removeprefix("Value error, ")
    return PlaybooksError(message, source=source, where=where, field=".".join(map(str, rest)),
                          line=line_of(text, loc))  # fmt: skip


_KINDS = ("task", "alert", "enrol")


def _problem_path(where: str | None, field: str, data: dict[str, Any]) -> list[str | int]:
    """The document path a problem names as `playbook 'x'` / `sequence 'y'` / `template 'z'`
    and a dotted field (empty when `where` names nothing `_where` writes)."""
    kind, _, quoted = (where or "").partition(" ")
    try:
        name = ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        return []
    path: list[str | int]
    if kind == "playbook":
        books = data.get("playbooks")
        found = [i for i, book in enumerate(books if isinstance(books, list) else [])
                 if isinstance(book, dict) and book.get("name") == name]  # fmt: skip
        path = ["playbooks", found[0]] if found else ["playbooks"]
    elif kind in ("sequence", "template"):
        path = [f"{kind}s", name]
    else:
        return []
    return path + [int(part) if part.isdigit() else part for part in field.split(".") if part]


def _where(loc: list[Any], data: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """Split an error location into 'playbook x' / 'sequence y' / 'template z' and the field."""
    if len(loc) >= 2 and loc[0] == "playbooks" and isinstance(loc[1], int):
        try:
            name = data["playbooks"][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            name = None
        return f"playbook {name if name else f'#{loc[1] + 1}'!r}", loc[2:]
    if len(loc) >= 2 and loc[0] in ("sequences", "templates"):
        return f"{loc[0][:-1]} {loc[1]!r}", loc[2:]
    return None, loc


# --- planning ----------------------------------------------------------------------------------


def plan_actions(change: TierChanged, playbooks: Playbooks) -> Plan:
    """What a tier change calls for: sequence exits first, then each matching playbook's actions.

    An action whose templates fail on this change's data is reported in `Plan.failures` and
    left out (a task is kept with a fallback title); the exits and other actions still apply.
    """
    context = change_context(change)
    requests: list[ActionRequest] = [
        ExitRequest(name, reason=f"{change.dimension.value}:{change.to}")
        for name, sequence in playbooks.sequences.items()
        if any(matches(t, change) for t in sequence.exit_on.changes)
    ]
    failures: list[ActionFailure] = []
    for book in playbooks.playbooks:
        if matches(book.when, change):
            for index in range(len(book.actions)):
                request, failure = _plan_one(book, index, playbooks, context)
                requests += [request] if request is not None else []
                failures += [failure] if failure is not None else []
    return Plan(requests, failures)


def plan_goal_exits(event_type: str, playbooks: Playbooks) -> list[ExitRequest]:
    """The enrolments a goal event (e.g. a purchase) ends."""
    return [
        ExitRequest(name, reason=f"goal:{event_type}")
        for name, sequence in playbooks.sequences.items()
        if event_type in sequence.exit_on.events
    ]


def matches(transition: Transition, change: TierChanged) -> bool:
    """Whether a change matches a transition pattern."""
    if transition.dimension != change.dimension:
        return False
    if transition.from_ is not None and change.from_ not in transition.from_:
        return False
    if transition.to is not None and change.to not in transition.to:
        return False
    if transition.cause is not None and change.cause not in transition.cause:
        return False
    if transition.if_ is None:
        return True
    return evaluate(transition.if_, _numeric(change.features), change.attributes)


def _numeric(features: Mapping[str, Any]) -> dict[str, Any]:
    """Feature values travel as JSON; decimal strings ("1000.00") compare as numbers again."""
    out: dict[str, Any] = {}
    for key, value in features.items():
        out[key] = value
        if isinstance(value, str):
            with contextlib.suppress(InvalidOperation):
                out[key] = Decimal(value)
    return out


def _plan_one(
    book: Playbook, index: int, playbooks: Playbooks, ctx: dict[str, Any]
) -> tuple[ActionRequest | None, ActionFailure | None]:
    """One action's request, or its failure (with a fallback request for a task); `ctx` is
    the change's part of the templates' context (`change_context`)."""
    try:
        return _plan(book, index, playbooks, ctx), None
    except TemplateFailed as exc:
        action = book.actions[index]
        if not isinstance(action, TaskAction):
            return None, ActionFailure(book.name, index, action.kind, str(exc))
        # Only the title failed: the task is still opened, and its title says what went wrong.
        title = f"{book.name}: task for customer {ctx['customer_id']} (template failed, {exc})"
        fallback = _task(book.name, action, " ".join(title.split())[:FALLBACK_TITLE_CHARS])
        return fallback, ActionFailure(book.name, index, action.kind, str(exc), fallback=True)


def _plan(book: Playbook, index: int, playbooks: Playbooks, ctx: dict[str, Any]) -> ActionRequest:
    action = book.actions[index]
    match action:
        case TaskAction():
            ctx = scoped(ctx, Scope.TASK, playbook=book.name)
            return _task(book.name, action, render_plain(action.title, ctx, what="title"))
        case AlertAction():
            message = playbooks.message(action)
            ctx = scoped(ctx, Scope.ALERT, playbook=book.name, audience=action.audience)
            return AlertRequest(
                book.name,
                index,
                action.channel,
                action.audience,
                _recipient(action.to, ctx, what="to"),
                render_plain(message.subject or "", ctx, what="subject"),
                render_body(message.text, ctx, what="text", escaping=_escaping(action.channel)),
            )
        case EnrolAction():
            return _plan_enrolment(book.name, action.sequence, playbooks, ctx)
    raise TypeError(f"unknown action {action!r}")


def _escaping(channel: Channel) -> Escaping:
    """E-mail bodies are HTML; webhook text is Slack-compatible, and so is log text (the
    lightest escaping that is still safe, so a log line reads nearly as plain text)."""
    return Escaping.HTML if channel is Channel.EMAIL else Escaping.SLACK


def _task(book: str, action: TaskAction, title: str) -> TaskRequest:
    return TaskRequest(book, title, action.queue, action.priority, action.due_in, action.assignee)


def _plan_enrolment(
    book: str, name: str, playbooks: Playbooks, ctx: dict[str, Any]
) -> EnrolRequest:
    sequence: SequenceDef = playbooks.sequences[name]
    steps = []
    for i, step in enumerate(sequence.steps):
        message = playbooks.message(step)
        step_ctx = scoped(ctx, Scope.STEP, playbook=book, sequence=name, step=step.name)
        where = f"step {step.name}"
        steps.append(
            PlannedStep(
                i,
                step.name,
                step.offset,
                step.channel,
                _recipient(step.to or DEFAULT_RECIPIENT, step_ctx, what=f"{where} to"),
                render_plain(message.subject or "", step_ctx, what=f"{where} subject"),
                render_body(
                    message.text, step_ctx, what=f"{where} text", escaping=_escaping(step.channel)
                ),
            )
        )
    return EnrolRequest(
        book,
        name,
        tuple(steps),
        sequence.reentry,
        sequence.reentry_after,
        sequence.quiet_hours,
        tuple(e.value for e in sequence.exit_on.events),
    )


def _recipient(template: str | None, ctx: dict[str, Any], *, what: str) -> str | None:
    if template is None:
        return None
    return render_plain(template, ctx, what=what) or None
