"""DATABASE_URL for the commands that use Postgres directly (`migrate`, `rules diff`, `run`):
settings read once, the URL checked before any connection, and problems told in one line."""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.markup import escape

from shared.database_url import url_problem
from shared.settings import ServiceSettings, settings_or_exit

S = TypeVar("S", bound=ServiceSettings)


def redacted(url: str) -> str:
    """DATABASE_URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except (ArgumentError, ValueError):
        return "DATABASE_URL"
    # Only the password replaced: SQLAlchemy's rendering also escapes the query (a socket
    # directory's `host=/tmp/...` became `host=%2Ftmp%2F...`, which psql does not take).
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


def refuse_bad_url(url: str, console: Console) -> None:
    """Exit 2 (bad configuration, as `settings_or_exit`) after one line when DATABASE_URL
    cannot name a database."""
    problem = url_problem(url)
    if problem is not None:
        line = f"[red]invalid configuration:[/red] DATABASE_URL: {escape(problem)}"
        console.print(line, soft_wrap=True)  # one line: scripts grep it
        raise SystemExit(2)


def database_settings(cls: type[S], console: Console) -> S:
    """`cls` from the environment, and its DATABASE_URL checked; exit 2 with one line per
    bad value otherwise."""
    settings = settings_or_exit(cls)
    refuse_bad_url(settings.database_url, console)
    return settings


def failure_reason(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy wraps it in `orig`)."""
    reason = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return reason.splitlines()[0]
