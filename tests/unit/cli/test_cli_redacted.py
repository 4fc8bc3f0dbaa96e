"""What the CLI prints of DATABASE_URL: never a password, wherever the URL carries it."""

from __future__ import annotations

import pytest

from cli.database import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db/x", "postgresql://u:***@db/x"),
        # libpq and asyncpg read a password from the query too: it was printed as given
        ("postgresql://u@db:1/x?password=CFGDBPW", "postgresql://u@db:1/x?password=***"),
        (
            "postgresql://u@db/x?sslmode=require&sslpassword=key%20pw&PassWord=p",
            "postgresql://u@db/x?sslmode=require&sslpassword=***&PassWord=***",
        ),
        ("postgresql:///x?host=/tmp/pg&password=", "postgresql:///x?host=/tmp/pg&password=***"),
        ("postgresql://u@db/x?host=/tmp/pg", "postgresql://u@db/x?host=/tmp/pg"),  # unescaped
    ],
)
def test_passwords_are_hidden_in_the_user_part_and_the_query(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_an_empty_password_is_shown_as_the_nothing_it_is() -> None:
    # `postgres:***@` for the embedded server's empty password suggested one to look for.
    url = "postgresql://postgres:@/postgres?host=/tmp/tierstream-pg-x/pgdata"
    assert redacted(url) == url
