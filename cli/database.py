"""DATABASE_URL for the commands that use Postgres directly (`migrate`, `rules diff`, `run`):
settings read once, the URL checked before any connection, and problems told in one line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from rich.console import Console
from rich.markup import escape

from shared.database_url import url_problem
from shared.settings import ServiceSettings, settings_or_exit

S = TypeVar("S", bound=ServiceSettings)


# Query parameters that carry a password (libpq and asyncpg read `?password=` too).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redacted(url: str) -> str:
    """DATABASE_URL without its password, in the user part or the query."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
        parts = urlsplit(url)
    except (ArgumentError, ValueError):
        return "DATABASE_URL"
    # Only the passwords replaced: SQLAlchemy's rendering also escapes the query (a socket
    # directory's `host=/tmp/...` became `host=%2Ftmp%2F...`, which psql does not take).
    query = "&".join(
        f"{key}=***" if unquote(key).lower() in _SECRET_PARAMETERS and sep else f"{key}{sep}{value}"
        for key, sep, value in (item.partition("=") for item in parts.query.split("&"))
    )
    netloc = parts.netloc
    if parts.password is not None:
        user = netloc.rpartition("@")[0].partition(":")[0]
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # By hand: urlunsplit drops the `//` of an empty host (postgresql:///db?host=/socket).
    rest = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{rest}"


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


def unset_database_url_hint(env: Mapping[str, str]) -> str:
    """What to add to a database command's failure when DATABASE_URL is not set (its
    default was used): a `tierstream run`'s database is not there."""
    if "DATABASE_URL" in env:
        return ""
    return (
        "; DATABASE_URL is not set: for the database of a `tierstream run`, paste the"
        " `export DATABASE_URL=...` line it printed"
    )
