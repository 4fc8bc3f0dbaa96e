"""Message templates: Jinja2 in a sandbox, escaped for the channel in message bodies, plain
for titles.

A body's substituted values are escaped for where the body goes: HTML e-mail escapes them
the HTML way (`&`, `<`, `>`, `"`, `'`); Slack-compatible webhook text only `&`, `<` and `>`,
the only entities Slack decodes (it showed "O&#39;Brien"), which is still enough to keep a
value from writing Slack markup (`<!channel>`, `<url|link>`). The template's own text is
the playbook author's and is never escaped. Subjects, task titles and recipients are plain
strings with no markup. Rendering can fail on one change's data (an attribute of an
unexpected type, say); every such failure is raised as `TemplateFailed`, so planning can
leave out just the action it belongs to.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from enum import Enum, StrEnum
from functools import cache
from typing import Any

from jinja2 import Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.environment import Environment
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from shared.contracts import TierChanged
from shared.domain.features import FEATURES


class TemplateFailed(ValueError):
    """A template that could not be rendered with a change's data; the message names `what`."""


@cache
class Escaping(Enum):
    """How a body's substituted values are escaped: for HTML, or for Slack-compatible text."""

    HTML = "html"
    SLACK = "slack"


def slack_escape(text: str) -> str:
    """Escape `&`, `<` and `>` as Slack documents (its control sequences are `<...>`)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_value(value: Any) -> Any:
    # Autoescaping stays on, so macros, `{% set %}` blocks and `|safe` keep their Markup
    # and are not escaped twice; each other value is escaped here, and the autoescape lets
    # the Markup returned through untouched.
    if hasattr(value, "__html__"):
        return value
    return Markup(slack_escape(str(value)))  # noqa: S704 (escaped: it is the escaping)


@cache
def _environment(escaping: Escaping | None) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        autoescape=escaping is not None,
        finalize=_slack_value if escaping is Escaping.SLACK else None,
        keep_trailing_newline=False,
    )


@cache
def _compiled(source: str, escaping: Escaping | None) -> Template:
    return _environment(escaping).from_string(source)


class Scope(StrEnum):
    """Where a template is rendered; each place adds its own names to the change's."""

    TASK = "a task title"
    ALERT = "an alert"
    STEP = "a sequence step"


# What templates can name: the one list that `change_context` and `scoped` build the render
# context from, and that `unknown_names` checks templates against. A name outside it would
# render as empty text (Jinja's default for an undefined name), so it is refused at load.
CHANGE_FIELDS = frozenset(field.alias or name for name, field in TierChanged.model_fields.items())
CHANGE_NAMES = CHANGE_FIELDS | {"customer", "change"}
SCOPE_NAMES: dict[Scope, tuple[str, ...]] = {
    Scope.TASK: ("playbook",),
    Scope.ALERT: ("playbook", "audience"),
    Scope.STEP: ("playbook", "sequence", "step"),
}


@cache  # asked for on every action planned
def template_names(scope: Scope) -> frozenset[str]:
    """Every name a template rendered in `scope` can use."""
    return CHANGE_NAMES | frozenset(SCOPE_NAMES[scope])


def change_context(change: TierChanged) -> dict[str, Any]:
    """The change's part of the context: its fields, the customer (id and attributes), and the
    whole change again as `change`."""
    data = change.model_dump(mode="json", by_alias=True)
    return {**data, "customer": {**change.attributes, "id": change.customer_id}, "change": data}


def scoped(base: Mapping[str, Any], scope: Scope, **values: str) -> dict[str, Any]:
    """The full context of a template rendered in `scope`: `base` (`change_context`) and the
    scope's own values, which must be exactly its names (a template checked against the list
    must find every name it was allowed)."""
    context = {**base, **values}
    if context.keys() != template_names(scope):
        raise TypeError(
            f"the context of {scope} needs {sorted(template_names(scope))}, not {sorted(context)}"
        )
    return context


def unknown_names(source: str, names: frozenset[str]) -> list[str]:
    """What a (syntactically valid) template reads that would render as empty text: top-level
    names outside `names`, fields `change.x` (or `change['x']`) a change does not have, and
    features outside the catalogue read as `features.x` or `features['x']` (also through
    `change`). Attributes stay open: each customer has its own."""
    tree = _environment(Escaping.HTML).parse(source)
    try:  # it compiles the template: `check_template` has refused what that fails on
        undeclared = meta.find_undeclared_variables(tree)
    except (TemplateError, RecursionError) as exc:
        return [f"template error: {exc}"]
    problems = [f"unknown variable {name!r}" for name in sorted(undeclared - names)]
    for target, key in _lookups(tree):
        if target == "change" and key not in CHANGE_FIELDS:
            close = difflib.get_close_matches(key, sorted(CHANGE_FIELDS), n=1)
            problems.append(
                f"unknown change field {key!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
            )
        elif target == "features" and key not in FEATURES:
            problems.append(f"unknown feature {key!r}")
    return list(dict.fromkeys(problems))


def read_features(source: str) -> list[str]:
    """The features a (valid) template reads by name: `features.x`, `features['x']`, also
    through `change`. One read by a computed key (`features[name]`) is not among them."""
    tree = _environment(Escaping.HTML).parse(source)
    return list(dict.fromkeys(key for target, key in _lookups(tree) if target == "features"))


def _lookups(tree: nodes.Template) -> Iterator[tuple[str, str]]:
    """Each key written out that the template looks up in the change's `features` or in
    `change` itself, as ("features" or "change", key); a method (`features.items()`) is not."""
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx != "load"}
    called = {id(call.node) for call in tree.find_all(nodes.Call)}
    lookups: list[nodes.Getattr | nodes.Getitem] = [
        *tree.find_all(nodes.Getattr),
        *tree.find_all(nodes.Getitem),
    ]
    for node in lookups:
        key = _key(node)
        if id(node) in called or key is None:
            continue
        if _is_features(node.node, assigned):
            yield "features", key
        elif _is_name(node.node, "change", assigned):
            yield "change", key


def _key(node: nodes.Getattr | nodes.Getitem) -> str | None:
    """`x.key` or `x['key']`: the key, when it is written out."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    return (
        node.arg.value
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)
        else None
    )


def _is_features(node: nodes.Node, assigned: set[str]) -> bool:
    """Whether `node` is the change's features: `features`, `change.features` or
    `change['features']`, unless the template assigns that name itself."""
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        return _key(node) == "features" and _is_name(node.node, "change", assigned)
    return _is_name(node, "features", assigned)


def _is_name(node: nodes.Node, name: str, assigned: set[str]) -> bool:
    """Whether `node` is the context's `name`: not one the template assigns itself."""
    return isinstance(node, nodes.Name) and node.name == name and name not in assigned


def check_template(source: str) -> str:
    """Validate a template (pydantic validator): its syntax, every filter and test it names,
    and that it loads no other template; returns the source unchanged.

    Jinja checks a filter or test name only when it compiles, and inside an `if` not even
    then but when the branch runs; an include has no loader to read from. Each of these
    failed on every change that reached it, and cost the action: they are refused here."""
    environment = _environment(Escaping.HTML)
    try:
        tree = environment.parse(source)
        if problems := _unavailable(tree, environment):
            raise ValueError("; ".join(problems))
        environment.compile(tree)  # what else only compiling finds (a block defined twice)
    except TemplateSyntaxError as exc:  # TemplateAssertionError (from compiling) included
        raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except RecursionError:
        raise ValueError("template nested too deeply") from None
    return source


# `{% include %}` and its kind read other templates through a loader, which there is not.
_LOADS = {
    nodes.Include: "include",
    nodes.Extends: "extends",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}
# Filters that take the name of a filter or test as an argument: its position, and which.
_BY_NAME = {
    "map": (0, "filter"),
    "select": (0, "test"),
    "reject": (0, "test"),
    "selectattr": (1, "test"),
    "rejectattr": (1, "test"),
}


def _unavailable(tree: nodes.Template, environment: Environment) -> list[str]:
    """Each filter or test `tree` names that `environment` lacks, and each template it loads."""
    known = {"filter": environment.filters, "test": environment.tests}
    problems = [
        f"{{% {_LOADS[type(node)]} %}} is not available (a template cannot load another)"
        for node in tree.find_all(tuple(_LOADS))
    ]
    calls: list[nodes.Filter | nodes.Test] = [
        *tree.find_all(nodes.Filter),
        *tree.find_all(nodes.Test),
    ]
    for node in calls:
        for kind, name in _names(node):
            if name not in known[kind]:
                problems.append(_unknown(kind, name, known[kind]))
    return list(dict.fromkeys(problems))


def _names(node: nodes.Filter | nodes.Test) -> list[tuple[str, str]]:
    """The filter or test a node calls, and the one it names as an argument (`map('upper')`,
    `select('odd')`), as (kind, name)."""
    if isinstance(node, nodes.Test):
        return [("test", node.name)]
    named = [("filter", node.name)]
    position, kind = _BY_NAME.get(node.name, (-1, ""))
    argument = node.args[position] if 0 <= position < len(node.args) else None
    if isinstance(argument, nodes.Const) and isinstance(argument.value, str):
        named.append((kind, argument.value))
    return named


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"Jinja's built-in {kind}s only"
    return f"unknown {kind} {name!r} ({hint})"


def render_body(source: str, context: Mapping[str, Any], *, what: str, escaping: Escaping) -> str:
    """Render a message body with every substituted value escaped as `escaping` says."""
    return _render(source, context, escaping=escaping, what=what)


def render_plain(source: str, context: Mapping[str, Any], *, what: str) -> str:
    """Render a one-line value (subject, title, recipient): no escaping, line breaks removed."""
    return " ".join(_render(source, context, escaping=None, what=what).split())


def _render(
    source: str, context: Mapping[str, Any], *, escaping: Escaping | None, what: str
) -> str:
    try:
        return _compiled(source, escaping).render(context)
    except Exception as exc:  # Jinja's UndefinedError or SecurityError, or the data's TypeError...
        raise TemplateFailed(f"{what}: {type(exc).__name__}: {exc}") from exc
