"""An error the CLI prints stays on one line when its output is not a terminal (rich wrapped
it at the console's width, 80 columns by default): scripts grep these lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import cli.main
from cli.main import app
from shared.embedded import free_port

NARROW = 40  # columns; every line checked is longer


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands' console as a pipe of NARROW columns (whatever COLUMNS the tests have)."""
    monkeypatch.setattr(cli.main, "console", Console(stderr=True, width=NARROW))


def one_line_with(
    args: list[str], start: str, *parts: str, env: dict[str, str] | None = None
) -> str:
    result = CliRunner().invoke(app, args, env=env)
    assert "Traceback" not in result.output
    found = [line for line in result.output.splitlines() if line.startswith(start)]
    assert len(found) == 1, result.output
    assert len(found[0]) > NARROW and all(part in found[0] for part in parts), result.output
    return found[0]


@pytest.mark.parametrize("kind", ["rules", "playbooks"])
def test_an_invalid_file_is_named_in_one_line(narrow: None, tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "a-file-whose-name-alone-is-wider-than-the-console.yaml"
    one_line_with([kind, "check", str(missing)], "invalid: ", str(missing), "No such file")


def test_report_says_it_cannot_read_the_apis_in_one_line(narrow: None) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = {f"TIERSTREAM_{s}_URL": closed for s in ("INGEST", "SCORER", "ACTIONS")}
    one_line_with(["report"], "cannot read the APIs: ", closed, "refused", env=env)


def test_simulate_says_it_cannot_write_in_one_line(narrow: None, tmp_path: Path) -> None:
    taken = tmp_path / "a-directory-where-the-events-file-should-go"
    taken.mkdir()
    args = ["simulate", "--dry-run", "--customers", "2", "--days", "3", "--output", str(taken)]
    one_line_with(args, "cannot write ", str(taken), "Is a directory")


def test_each_rejected_row_of_an_import_is_one_line(narrow: None, tmp_path: Path) -> None:
    source = tmp_path / "logins.csv"
    when = "not-a-time-at-all-and-far-wider-than-the-console"
    source.write_text(f"customer_id,occurred_at,channel\nrow-a,{when},web\n")
    env = {"TIERSTREAM_INGEST_URL": f"http://127.0.0.1:{free_port()}"}  # nothing to send
    args = ["import", str(source), "--type", "login"]
    one_line_with(args, "line 2: ", f"occurred_at: '{when}' is not ISO 8601", env=env)


def test_simulate_against_nothing_says_it_could_not_reach_ingest_at_once(narrow: None) -> None:
    # It showed "sending 0/3" for 60 s, then "ingest refused the events: ingest unavailable
    # at ...": nothing had refused anything, nothing listened there.
    closed = f"http://127.0.0.1:{free_port()}"
    args = ["simulate", "--customers", "5", "--days", "60"]
    started = time.monotonic()
    line = one_line_with(
        args, "could not send the events: could not reach ingest at ", closed,
        "nothing is listening there", env={"TIERSTREAM_INGEST_URL": closed},
    )  # fmt: skip
    assert time.monotonic() - started < 30 and "refused the events" not in line
