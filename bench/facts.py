"""Facts about the machine and the software a benchmark ran on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.infra import Infra, with_database
from bench.settings import REPO_ROOT
from shared.db import asyncpg_dsn

PACKAGES = (
    "aiokafka", "asyncpg", "pydantic", "pydantic-core", "fastapi", "uvicorn", "httpx", "aiohttp",
)  # fmt: skip
PG_SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "wal_level", "max_connections")


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


async def postgres_facts(infra: Infra) -> dict[str, Any]:
    """Server version and the settings that matter for write throughput."""
    conn = await asyncpg.connect(asyncpg_dsn(with_database(infra.pg_server_url, "postgres")))
    try:
        facts: dict[str, Any] = {"version": await conn.fetchval("SHOW server_version")}
        for name in PG_SETTINGS:
            facts[name] = await conn.fetchval(f"SHOW {name}")
    finally:
        await conn.close()
    return facts


def git_revision() -> str | None:
    """The checkout's commit, with `-dirty` when files differ from it (None outside git)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


async def machine_facts(infra: Infra) -> dict[str, Any]:
    """Cores, CPU, memory, load, Python and library versions, broker and Postgres."""
    memory = psutil.virtual_memory().total
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "memory_gib": round(memory / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in psutil.getloadavg()],
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {p: _version(p) for p in PACKAGES},
        "uvloop_installed": _version("uvloop") is not None,
        "broker": infra.broker_kind,
        "postgres": {"kind": infra.postgres_kind, **await postgres_facts(infra)},
    }
