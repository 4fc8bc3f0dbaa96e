"""The Makefile's first step on a fresh machine: an interpreter too old, or missing, is named
with the way out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def an_old_python(where: Path) -> Path:
    """An interpreter that runs `-c CODE` as Python 3.10.12 would see itself."""
    fake = where / "python3.10"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "sys.version_info = (3, 10, 12, 'final', 0)\n"
        "exec(sys.argv[2])\n"
    )
    fake.chmod(0o755)
    return fake


def test_too_old_a_python_is_named_with_the_way_out(tmp_path: Path) -> None:
    # It said "Python >= 3.11 is required": neither which Python was found nor what to do.
    old = an_old_python(tmp_path)
    done = make(f"PYTHON={old}", f"VENV={tmp_path / 'venv'}", "run")
    assert done.returncode != 0
    assert (
        f"Python >= 3.11 is required, and {old} is Python 3.10.12: install Python 3.11 or"
        " newer and name it, e.g. make PYTHON=python3.12 run"
    ) in done.stderr
    assert not (tmp_path / "venv").exists()


def test_a_python_that_is_not_there_is_named_with_the_way_out(tmp_path: Path) -> None:
    done = make("PYTHON=python3.99-not-installed", f"VENV={tmp_path / 'venv'}", "install")
    assert done.returncode != 0
    assert "PYTHON=python3.99-not-installed is not a command: install Python 3.11" in done.stderr
    assert "make PYTHON=python3.12 install" in done.stderr


def test_make_help_gives_the_unit_tests_their_real_duration() -> None:
    # "milliseconds", for a run of some 30 s.
    [line] = [line for line in make("help").stdout.splitlines() if "test-unit " in line]
    assert "milliseconds" not in line and "30 s" in line
