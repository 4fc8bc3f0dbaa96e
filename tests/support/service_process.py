"""A service run as its own process (`tierstream SERVICE`), as a deployment starts it: until
it answers ready, or to its refusal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def service_env(base_env: dict[str, str], service: str, port: int, **extra: str) -> dict[str, str]:
    """The test's environment for `service` on `port`; actions does not migrate itself."""
    return {**os.environ, **base_env, "COLUMNS": "300", f"{service.upper()}_PORT": str(port),
            "ACTIONS_MIGRATE": "false", **extra}  # fmt: skip


def started(service: str, env: dict[str, str], port: int) -> None:
    """`tierstream SERVICE` answers 200 on /readyz, then stops cleanly on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", service], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline, ready = time.monotonic() + 60, False
        while not ready and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            time.sleep(0.2)
        if not ready:
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ready, output
    assert proc.returncode == 0, output


async def refused(service: str, env: dict[str, str]) -> tuple[int, str]:
    """`tierstream SERVICE` run to its end (a refusal): its exit code and its output."""
    ran = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cli.main", service],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    return ran.returncode, ran.stdout + ran.stderr
