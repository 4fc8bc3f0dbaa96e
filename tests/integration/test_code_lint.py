"""The code is ruff-clean, formatted and mypy --strict clean: CI runs `make test` alone, so a
lint or type regression landed unnoticed while `make lint` was left to each contributor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = {
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy", "shared", "services", "cli", "bench", "tests"],  # as `make lint` runs it
}


@pytest.mark.parametrize("check", CHECKS)
def test_the_code_passes(check: str) -> None:
    found = subprocess.run(
        [sys.executable, "-m", *CHECKS[check]], cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert found.returncode == 0, f"{check}:\n{found.stdout}\n{found.stderr}"
