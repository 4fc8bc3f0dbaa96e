"""Resuming an import: the checkpoint, and a reject file without duplicates."""

from __future__ import annotations

import csv
import os
from contextlib import closing
from pathlib import Path

import pytest
from rich.console import Console

from cli.csv_import import (
    Checkpoint,
    checkpoint_path,
    input_fingerprint,
    load_checkpoint,
    rejects_path,
    save_checkpoint,
)
from cli.importer import RejectFile, Row


def source(tmp_path: Path, text: str = "customer_id,occurred_at,channel\n") -> Path:
    path = tmp_path / "logins.csv"
    path.write_text(text)
    return path


def test_files_sit_next_to_the_input(tmp_path: Path) -> None:
    path = source(tmp_path)
    assert checkpoint_path(path) == tmp_path / "logins.csv.checkpoint"
    assert rejects_path(path) == tmp_path / "logins.csv.rejects.csv"


def test_a_saved_checkpoint_is_loaded_for_the_same_file_and_options(tmp_path: Path) -> None:
    path = source(tmp_path)
    fingerprint = input_fingerprint(path, "login", {})
    save_checkpoint(checkpoint_path(path), Checkpoint(41, fingerprint))
    assert load_checkpoint(checkpoint_path(path), fingerprint) == 41
    assert not (tmp_path / "logins.csv.checkpoint.tmp").exists()


def test_no_or_a_broken_checkpoint_means_start_at_the_top(tmp_path: Path) -> None:
    path = source(tmp_path)
    fingerprint = input_fingerprint(path, "login", {})
    assert load_checkpoint(checkpoint_path(path), fingerprint) == 0
    checkpoint_path(path).write_text("{not json")
    assert load_checkpoint(checkpoint_path(path), fingerprint) == 0


def test_a_changed_file_or_other_options_ignore_the_checkpoint(tmp_path: Path) -> None:
    path = source(tmp_path)
    before = input_fingerprint(path, "login", {})
    save_checkpoint(checkpoint_path(path), Checkpoint(10, before))
    assert input_fingerprint(path, "support", {}) != before
    assert input_fingerprint(path, "login", {"channel": "Kanal"}) != before
    path.write_text("customer_id,occurred_at,channel\nc1,2024-01-01,web\n")
    os.utime(path, ns=(1, 1))
    after = input_fingerprint(path, "login", {})
    assert after != before
    assert load_checkpoint(checkpoint_path(path), after) == 0


def read_rejects(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_a_resumed_reject_file_keeps_rows_up_to_the_checkpoint_only(tmp_path: Path) -> None:
    path = rejects_path(source(tmp_path))
    header = ["customer_id", "occurred_at", "channel"]
    first = RejectFile(path, header, keep_upto=0)
    first.add([Row(3, ["c3", "x", "web"], reason="bad date"), Row(9, ["c9"], reason="short")])
    first.close()  # the run died after line 9's reject, before its checkpoint moved past 9
    resumed = RejectFile(path, header, keep_upto=5)
    assert resumed.earlier == 1
    resumed.add([Row(9, ["c9"], reason="short")])
    resumed.close()
    assert read_rejects(path) == [
        ["line", "reason", *header],
        ["3", "bad date", "c3", "x", "web"],
        ["9", "short", "c9"],
    ]


def test_a_fresh_import_starts_a_new_reject_file_at_its_first_reject(tmp_path: Path) -> None:
    path = rejects_path(source(tmp_path))
    path.write_text("line,reason\n2,old\n")
    rejects = RejectFile(path, ["a"], keep_upto=0)
    try:
        assert path.read_text() == "line,reason\n2,old\n"  # until this run settles a chunk
        rejects.add([])
        assert not path.exists()  # a settled chunk without rejects: the earlier run's is stale
        rejects.add([Row(4, ["x"], reason="bad")])
    finally:
        rejects.close()
    assert read_rejects(path) == [["line", "reason", "a"], ["4", "bad", "x"]]


def test_a_fresh_import_replaces_the_earlier_file_with_its_first_chunks_rejects(
    tmp_path: Path,
) -> None:
    path = rejects_path(source(tmp_path))
    path.write_text("line,reason,a\n2,old,y\n")
    with closing(RejectFile(path, ["a"], keep_upto=0)) as rejects:
        rejects.add([Row(4, ["x"], reason="bad")])
        rejects.finish()  # the end of the import: its own file stays
    assert read_rejects(path) == [["line", "reason", "a"], ["4", "bad", "x"]]


def test_an_import_that_settles_nothing_keeps_the_earlier_runs_rejects(tmp_path: Path) -> None:
    # A re-run that stopped before its first acknowledgement (a refused API key, ingest
    # down) deleted the rejects file the previous run had reported.
    path = rejects_path(source(tmp_path))
    path.write_text("line,reason,a\n2,old,y\n")
    RejectFile(path, ["a"], keep_upto=0).close()
    assert read_rejects(path) == [["line", "reason", "a"], ["2", "old", "y"]]


def test_a_finished_import_without_rows_removes_the_earlier_runs_rejects(tmp_path: Path) -> None:
    path = rejects_path(source(tmp_path))
    path.write_text("line,reason,a\n2,old,y\n")
    with closing(RejectFile(path, ["a"], keep_upto=0)) as rejects:
        rejects.finish()  # e.g. the header is all that is left of the file
    assert not path.exists()


def test_an_import_without_rejects_writes_no_reject_file(tmp_path: Path) -> None:
    path = rejects_path(source(tmp_path))
    RejectFile(path, ["a"], keep_upto=0).close()  # e.g. ingest unreachable before any reply
    assert not path.exists()


def test_a_resumed_reject_file_has_the_earlier_rejects_on_disk_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    path = rejects_path(source(tmp_path))
    header = ["customer_id", "occurred_at", "channel"]
    path.write_text("line,reason,customer_id,occurred_at,channel\n3,bad date,c3,x,web\n")
    resumed = RejectFile(path, header, keep_upto=5)
    try:  # read while it is open: a run killed now must not have lost line 3's reject
        assert read_rejects(path) == [
            ["line", "reason", *header],
            ["3", "bad date", "c3", "x", "web"],
        ]
        assert not path.with_name(path.name + ".tmp").exists()
    finally:
        resumed.close()


def test_ctrl_c_during_an_import_says_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It exited 130 without a word; the checkpoint already held what ingest had taken.
    import cli.importer as importer

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importer, "_import", interrupted)
    console = Console(record=True, width=200)
    options = importer.ImportOptions(tmp_path / "x.csv", "login", (), 500)
    assert importer.run_import(options, console) == 130
    assert "interrupted: run the same command again to resume" in console.export_text()
