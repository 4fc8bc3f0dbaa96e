"""What makes DATABASE_URL usable, checked before any connection by the services' settings
and by the CLI's database commands alike (problems told without quoting the URL: it may
hold a password)."""

from __future__ import annotations

URL_SHAPE = "postgresql://user:password@host:port/database"


def url_problem(url: str) -> str | None:
    """Why DATABASE_URL cannot name a Postgres database; None when it can. Caught here, the
    driver's errors would be a parser's or a socket's, and another database's URL (mysql://,
    http://) was used as a Postgres one: the driver is chosen by the code, not the URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        port = parsed.port
    except ArgumentError:
        return f"not a database URL; write it as {URL_SHAPE}"
    except ValueError:  # sqlalchemy reads the port with int()
        return f"its port is not a number; write it as {URL_SHAPE}"
    if not is_postgres_scheme(parsed.drivername):
        return (
            f"its scheme {parsed.drivername}:// is not Postgres's (postgresql://, postgres:// or"
            f" postgresql+DRIVER://); write it as {URL_SHAPE}"
        )
    if port is not None and not 1 <= port <= 65535:
        return f"its port {port} is not between 1 and 65535"
    return None


def is_postgres_scheme(scheme: str) -> bool:
    """postgres, postgresql, or postgresql+DRIVER (any: asyncpg is used whatever it names)."""
    backend, plus, driver = scheme.lower().partition("+")
    if plus:
        return backend == "postgresql" and bool(driver)
    return backend in ("postgres", "postgresql")
