"""Sampling profiles of a service process with py-spy, summarised as hot spots.

py-spy attaches from outside (`--nonblocking`: the target is never paused) and writes
collapsed stacks; idle samples (waiting in the event loop's select) are left out, so
shares are of the CPU time the process actually spent.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROJECT_MARKERS = ("services/", "shared/")


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy recording one process until stopped."""

    def __init__(self, pid: int, out: Path, *, rate: int = 100) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--nonblocking", "--nolineno",
             "--format", "raw", "--rate", str(self.rate), "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def stop(self) -> None:
        """SIGINT makes py-spy write what it sampled."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass(frozen=True)
class HotSpot:
    """One function's share of the sampled CPU time."""

    function: str
    self_share: float
    total_share: float


def _stacks(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def _short(frame: str) -> str:
    """`fold (/x/site-packages/shared/domain/state.py)` -> `fold (shared/domain/state.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def hot_spots(path: Path) -> tuple[int, list[HotSpot]]:
    """Total samples and every function's self and inclusive share, busiest first."""
    stacks = _stacks(path)
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [_short(f) for f in stack]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    spots = [
        HotSpot(f, own[f] / total if total else 0.0, inclusive[f] / total if total else 0.0)
        for f in inclusive
    ]
    return total, sorted(spots, key=lambda s: s.total_share, reverse=True)


def package_of(function: str) -> str:
    """`fold (shared/domain/state.py)` -> `shared/domain`; `send (aiokafka/x.py)` -> `aiokafka`."""
    where = function.partition(" (")[2].rstrip(")")
    parts = where.split("/")
    if parts[0] in ("shared", "services") and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py") if where else "?"


def summarise(path: Path, *, top: int = 15) -> dict[str, object]:
    """The hot spots worth reading: project functions by inclusive share, anything by self,
    and self time per package."""
    total, spots = hot_spots(path)
    packages: dict[str, float] = {}
    for spot in spots:
        package = package_of(spot.function)
        packages[package] = packages.get(package, 0.0) + spot.self_share
    ours = [s for s in spots if any(m in s.function for m in PROJECT_MARKERS)]
    by_self = sorted(spots, key=lambda s: s.self_share, reverse=True)

    def rows(items: list[HotSpot]) -> list[dict[str, object]]:
        return [
            {"function": s.function, "self_pct": round(100 * s.self_share, 1),
             "total_pct": round(100 * s.total_share, 1)}
            for s in items[:top]
        ]  # fmt: skip

    return {
        "samples": total,
        "project_inclusive": rows(ours),
        "self": rows(by_self),
        "self_by_package": {
            p: round(100 * v, 1)
            for p, v in sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:top]
        },
    }
