"""Message templates: Jinja2 in a sandbox, HTML-escaped for message bodies, plain for titles.

Bodies are escaped because they end up in HTML e-mail and Slack `text` (which needs `&`, `<`
and `>` escaped); subjects, task titles and recipients are plain strings with no markup.
Rendering can fail on one change's data (an attribute of an unexpected type, say); every such
failure is raised as `TemplateFailed`, so planning can leave out just the action it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateFailed(ValueError):
    """A template that could not be rendered with a change's data; the message names `what`."""


@cache
def _environment(escape: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(autoescape=escape, keep_trailing_newline=False)


@cache
def _compiled(source: str, escape: bool) -> Template:
    return _environment(escape).from_string(source)


def check_template(source: str) -> str:
    """Validate Jinja2 syntax (pydantic validator); returns the source unchanged."""
    try:
        _environment(True).parse(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    return source


def render_body(source: str, context: Mapping[str, Any], *, what: str) -> str:
    """Render a message body with every substituted value HTML-escaped."""
    return _render(source, context, escape=True, what=what)


def render_plain(source: str, context: Mapping[str, Any], *, what: str) -> str:
    """Render a one-line value (subject, title, recipient): no escaping, line breaks removed."""
    return " ".join(_render(source, context, escape=False, what=what).split())


def _render(source: str, context: Mapping[str, Any], *, escape: bool, what: str) -> str:
    try:
        return _compiled(source, escape).render(context)
    except Exception as exc:  # Jinja's UndefinedError or SecurityError, or the data's TypeError...
        raise TemplateFailed(f"{what}: {type(exc).__name__}: {exc}") from exc
