"""DATABASE_URL for the commands that use Postgres directly (`migrate`, `rules diff`, `run`):
settings read once, the URL checked before any connection, and problems told in one line."""

from __future__ import annotations

import os
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
    if parts.password:  # an empty one (`postgres:@`, the embedded server's) hides nothing
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


def socket_directories(url: str) -> list[str]:
    """The Unix-socket directories DATABASE_URL connects through (libpq's `host=/dir`, in the
    query or percent-encoded as the host); none for a TCP host or a URL that is not one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return []
    query = parsed.query.get("host", ())
    hosts = [query] if isinstance(query, str) else list(query)
    if parsed.host:
        hosts.append(unquote(parsed.host))
    return [host for host in hosts if host.startswith("/")]


def missing_server(url: str) -> str | None:
    """Why nothing can answer at DATABASE_URL when its socket directory is not there (None:
    it is, or the URL names a TCP host). A `DATABASE_URL` exported from an ended
    `tierstream run` failed with a bare "No such file or directory"."""
    missing = [d for d in socket_directories(url) if not os.path.isdir(d)]
    if not missing:
        return None
    if all("tierstream-pg-" in d for d in missing):
        return (
            f"the embedded Postgres of an earlier `tierstream run` is gone ({missing[0]} no"
            " longer exists): unset DATABASE_URL, or paste the `export DATABASE_URL=...` line"
            " of a running one"
        )
    return (
        f"the socket directory {missing[0]} does not exist: is the server running, and is"
        " DATABASE_URL's host= its directory?"
    )


def database_url_hint(env: Mapping[str, str], url: str) -> str:
    """What to add to a database command's failure: DATABASE_URL unset (its default is not a
    `tierstream run`'s database), or naming a server that is gone."""
    gone = missing_server(url)
    return unset_database_url_hint(env) or (f"; {gone}" if gone else "")
