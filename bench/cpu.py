"""CPU seconds spent by the processes of a phase (a process and all its children)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu(process: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        return float(times.user + times.system)
    return 0.0


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in a Postgres data directory's `postmaster.pid`, if the file is there."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU seconds of named process trees between `start()` and `read()`.

    Processes that appear in between count from zero; processes that exit in between
    lose what they used (short-lived helpers are rare here).
    """

    def __init__(self, roots: Mapping[str, int | None]) -> None:
        self.roots = {name: pid for name, pid in roots.items() if pid is not None}
        self._start: dict[int, float] = {}

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {p.pid: _cpu(p) for p in _tree(pid)} for name, pid in self.roots.items()}

    def start(self) -> None:
        self._start = {pid: s for per in self._snapshot().values() for pid, s in per.items()}

    def read(self) -> dict[str, float]:
        """CPU seconds per named tree since `start()`."""
        return {
            name: round(sum(max(0.0, s - self._start.get(pid, 0.0)) for pid, s in per.items()), 2)
            for name, per in self._snapshot().items()
        }
