"""`rules check` and `playbooks check` exit with the check's code when the reader of their
output leaves early (`| head -1`, `| grep -q valid`), not 1 for the closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.domain.playbooks import default_playbooks_path
from shared.domain.rules import default_rules_path

ROOT = Path(__file__).resolve().parents[3]


def _check_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written: every write fails
    try:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args], stdout=write, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "args",
    [
        ("rules", "check", str(default_rules_path())),
        ("playbooks", "check", str(default_playbooks_path())),
    ],
)
def test_a_valid_file_exits_0_when_the_reader_leaves(args: tuple[str, ...]) -> None:
    # Before: exit 1 and nothing said (rules), or "invalid: [Errno 32] Broken pipe" (playbooks).
    done = _check_into_a_closed_pipe(*args)
    assert (done.returncode, done.stderr) == (0, "")


def test_an_invalid_file_still_exits_1(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text("- a list\n")
    done = _check_into_a_closed_pipe("rules", "check", str(broken))
    assert done.returncode == 1 and done.stderr.startswith("invalid: "), done.stderr
