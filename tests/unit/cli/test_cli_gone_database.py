"""A DATABASE_URL whose socket directory is gone (an ended `tierstream run`'s, still exported):
the commands say the server is gone, not "No such file or directory"."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.database import missing_server, socket_directories
from cli.main import app
from cli.run import _bootstrap

GONE = "postgresql://postgres:@/postgres?host=/tmp/tierstream-pg-gone-for-good/pgdata"
TOLD = (
    "the embedded Postgres of an earlier `tierstream run` is gone"
    " (/tmp/tierstream-pg-gone-for-good/pgdata no longer exists): unset DATABASE_URL"
)


def one_line(output: str) -> str:
    [line] = output.splitlines()
    return line


def test_run_with_the_url_of_an_ended_run_says_its_server_is_gone_before_starting() -> None:
    result = CliRunner().invoke(app, ["run", "--no-demo"], env={"DATABASE_URL": GONE})
    assert result.exit_code == 1, result.output
    line = one_line(result.output)
    assert line.startswith(f"cannot start: {TOLD}")


def test_run_s_bootstrap_says_so_too() -> None:
    # What `make run` printed: "cannot migrate postgresql://postgres:***@/postgres?host=...:
    # [Errno 2] No such file or directory", and nothing on why.
    problem = _bootstrap({"DATABASE_URL": GONE, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert problem is not None
    assert problem.startswith(f"cannot migrate {GONE}: ")
    assert TOLD in problem and "***" not in problem


def test_migrate_with_the_url_of_an_ended_run_says_its_server_is_gone() -> None:
    result = CliRunner().invoke(app, ["migrate"], env={"DATABASE_URL": GONE})
    assert result.exit_code == 1, result.output
    line = one_line(result.output)
    assert line.startswith(f"cannot migrate {GONE}: ") and TOLD in line


@pytest.mark.parametrize(
    ("url", "directories"),
    [
        ("postgresql://u@db:5432/x", []),
        ("postgresql:///x?host=/a&host=/b", ["/a", "/b"]),
        ("postgresql://%2Fvar%2Frun%2Fpostgresql/x", ["/var/run/postgresql"]),
        ("not a url", []),
    ],
)
def test_socket_directories_are_read_from_the_query_and_the_host(
    url: str, directories: list[str]
) -> None:
    assert socket_directories(url) == directories


def test_only_a_missing_socket_directory_is_told(tmp_path: Path) -> None:
    assert missing_server(f"postgresql:///x?host={tmp_path}") is None
    assert missing_server("postgresql://u@127.0.0.1:1/x") is None
    other = missing_server(f"postgresql:///x?host={tmp_path}/nope")
    assert other == (
        f"the socket directory {tmp_path}/nope does not exist: is the server running, and is"
        " DATABASE_URL's host= its directory?"
    )


def test_rules_diff_with_the_url_of_an_ended_run_says_its_server_is_gone() -> None:
    from shared.domain.rules import default_rules_path

    rules = str(default_rules_path())
    result = CliRunner().invoke(app, ["rules", "diff", rules], env={"DATABASE_URL": GONE})
    assert result.exit_code == 1, result.output
    assert TOLD in one_line(result.output)
