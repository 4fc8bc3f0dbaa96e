"""`tierstream import` as a user meets it: usage errors, unusable input files, the rejects
file of an earlier run and the progress bar (ingest is a local scripted HTTP server)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.importer import ImportExit, ImportOptions, run_import
from cli.main import app
from tests.support.json_server import json_server

HEADER = "customer_id,occurred_at,order_id,amount,currency\n"


@pytest.fixture
def ingest(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A local ingest that accepts every batch; yields the batches it was sent."""
    sent: list[Any] = []

    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        sent.append(body)
        return 202, {}, {"event_ids": [event["event_id"] for event in body["events"]]}

    with json_server(answer) as url:
        monkeypatch.setenv("TIERSTREAM_INGEST_URL", url)
        yield sent


def purchases(tmp_path: Path, text: str = HEADER + "c1,2026-05-01,o1,10,EUR\n") -> Path:
    path = tmp_path / "good.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ("amount", "'amount': expected field=csv_column"),
        ("amout=Total", "purchase has no field 'amout'"),
    ],
)
def test_a_malformed_column_mapping_is_a_usage_error(
    tmp_path: Path, column: str, reason: str
) -> None:
    # It was exit 4 ("fix the input"); the help and the README say a bad option is 2.
    args = ["import", str(purchases(tmp_path)), "--type", "purchase", "--column", column]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "Invalid value for --column" in result.output and reason in result.output
    assert not (tmp_path / "good.csv.rejects.csv").exists()


def test_run_import_says_a_malformed_mapping_is_a_usage_error(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    options = ImportOptions(purchases(tmp_path), "purchase", ("amount",))
    assert run_import(options, console) == ImportExit.USAGE
    assert "--column: 'amount': expected field=csv_column" in console.export_text()


def test_an_empty_file_is_refused_as_empty_with_the_bad_input_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["import", str(purchases(tmp_path, "")), "--type", "purchase"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == ImportExit.REFUSED, result.output  # 4: fix the CSV first
    assert "the file is empty: no header row" in result.output, result.output
    assert "no column for" not in result.output


def test_a_file_that_is_not_utf8_is_refused_naming_the_line_before_anything_is_sent(
    tmp_path: Path, ingest: list[Any]
) -> None:
    # It said "'utf-8' codec can't decode byte 0xe9 in position 53: invalid continuation
    # byte": a position in a read buffer, nothing about the line or what to do.
    source = tmp_path / "good.csv"
    source.write_bytes(
        (HEADER + "c1,2026-05-01,o1,10,EUR\nRen\xe9,2026-05-02,o2,5,EUR\n").encode("latin-1")
    )
    console = Console(record=True, width=300)
    assert run_import(ImportOptions(source, "purchase"), console) == ImportExit.REFUSED
    said = console.export_text()
    assert "line 3: not UTF-8 text (byte 0xe9" in said, said
    assert "re-encode the file as UTF-8" in said and "codec" not in said
    assert ingest == []  # refused up front, not after the rows before it were sent


def test_a_rerun_that_sends_nothing_keeps_the_earlier_rejects_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = purchases(tmp_path, HEADER + "c1,2026-05-01,o1,10,EUR\nc2,not-a-date,o2,5,EUR\n")
    rejects = tmp_path / "good.csv.rejects.csv"
    key = {"good": True}

    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if not key["good"]:
            return 401, {}, {"title": "Unauthorized", "status": 401, "detail": "bad API key"}
        return 202, {}, {"event_ids": [event["event_id"] for event in body["events"]]}

    console = Console(record=True, width=300)
    with json_server(answer) as url:
        monkeypatch.setenv("TIERSTREAM_INGEST_URL", url)
        monkeypatch.setenv("TIERSTREAM_API_KEY", "the-key")
        assert run_import(ImportOptions(source, "purchase"), console) == ImportExit.REJECTED
        reported = rejects.read_text()
        assert "not-a-date" in reported
        key["good"] = False  # TIERSTREAM_API_KEY=wrong: ingest refuses the first request
        assert run_import(ImportOptions(source, "purchase"), console) == ImportExit.REFUSED
    assert "API key was refused" in console.export_text()
    assert rejects.read_text() == reported  # was deleted before anything was sent


@pytest.mark.parametrize(
    ("rows", "shown"),
    [
        (["c1,2026-05-01,o1,10,EUR", "c2,2026-05-02,o2,5,EUR", "c3,2026-05-03,o3,7,EUR"], "3/3"),
        ([], "0/0"),
    ],
)
def test_the_progress_bar_counts_the_rows_lines_not_the_header(
    tmp_path: Path, ingest: list[Any], rows: list[str], shown: str
) -> None:
    # 10,000 rows showed 10001/10001 against "read 10000"; a header alone showed 1/1.
    source = purchases(tmp_path, HEADER + "".join(f"{row}\n" for row in rows))
    out = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=150)
    assert run_import(ImportOptions(source, "purchase"), out) == ImportExit.DONE
    assert isinstance(out.file, io.StringIO)
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.file.getvalue())
    assert re.search(rf"importing\b.*\s{shown} lines\b", drawn), drawn
    assert re.search(rf"read\b.*\b{len(rows)}\b", drawn), drawn
