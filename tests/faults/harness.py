"""Process harness for the fault suite: service subprocesses we can SIGKILL and restart.

Each service runs as `python -m services.<name>`, configured by environment only, exactly
as `tierstream run` or a container would start it. The harness plays the supervisor: it
restarts a killed process at once and keeps every process's output in one log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path

import httpx
import psutil

from shared.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "faults-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def pipeline_env(
    bootstrap: str, database_url: str, namespace: str, *, now: datetime | None
) -> dict[str, str]:
    """Environment every service of one test shares: broker, database, topics, fixed now."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "TIERSTREAM_TOPIC_NAMESPACE": namespace,
        "TIERSTREAM_PARTITIONS": "3",
        # A SIGKILLed member holds its partitions until its session expires: keep it short.
        "KAFKA_SESSION_TIMEOUT_MS": "4000",
        "KAFKA_REQUEST_TIMEOUT_MS": "5000",
        "TIERSTREAM_API_KEYS": f"faults:{API_KEY}",
        "TIERSTREAM_LOG_LEVEL": "INFO",
        # Fast loops: the suite waits on them.
        "SCORER_RELAY_INTERVAL_S": "0.1",
        "SCORER_POLL_TIMEOUT_MS": "100",
        "SCORER_SWEEP_INTERVAL_S": "1",
        "SCORER_GAUGE_INTERVAL_S": "1",
        "ACTIONS_POLL_TIMEOUT_MS": "100",
        "ACTIONS_DISPATCH_INTERVAL_S": "0.05",
        "ACTIONS_GAUGE_INTERVAL_S": "1",
        "ACTIONS_MIGRATE": "false",
    }
    if now is not None:
        env["TIERSTREAM_NOW"] = now.isoformat()
    return env


class ServiceProcess:
    """One service subprocess: start, SIGKILL, SIGTERM, restart; its HTTP port and RSS."""

    def __init__(
        self, service: str, env: Mapping[str, str], log_dir: Path, *, name: str | None = None
    ) -> None:
        self.service, self.name = service, name or service
        self.port = free_port()
        self.env = {**os.environ, **env, f"{service.upper()}_PORT": str(self.port)}
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServiceProcess:
        """Start the process (it must not be running)."""
        assert not self.alive, f"{self.name} is already running"
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start #{self.starts + 1} of {self.name} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.service}"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, no goodbye to the broker or Postgres."""
        assert self.proc is not None and self.alive, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def restart_after_kill(self) -> None:
        """What a supervisor does: SIGKILL, then start again at once."""
        self.kill()
        self.start()

    def terminate(self, within: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL if it does not stop in time)."""
        self.signal_stop()
        return self.wait_exit(within)

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, within: float = 30.0) -> int:
        if self.proc is None:
            return 0
        try:
            self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return int(self.proc.returncode)

    def rss_bytes(self) -> int:
        """Resident memory of the running process."""
        assert self.proc is not None and self.alive, f"{self.name} is not running"
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    async def get(self, path: str, *, within: float = 5.0) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=within) as http:
            return await http.get(path, headers=AUTH)

    async def wait_serving(self, within: float = 60.0) -> None:
        """Until /healthz answers; fails at once (with the log) when the process exits."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await self.get("/healthz", within=1.0)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not serving after {within}s:\n{self.log_tail()}")

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self.get("/metrics")).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


def terminate_all(*processes: ServiceProcess) -> list[int]:
    """SIGTERM every process at once, then collect the exit codes (graceful drains overlap)."""
    for process in processes:
        process.signal_stop()
    return [process.wait_exit() for process in processes]


async def stop_all(*processes: ServiceProcess) -> list[int]:
    """`terminate_all` off the event loop: a draining service may still be talking to a
    receiver that this test's loop serves."""
    return await asyncio.to_thread(terminate_all, *processes)


class Harness:
    """Owns the subprocesses of one test; whatever still runs at the end is killed."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ServiceProcess] = []

    def spawn(
        self, service: str, env: Mapping[str, str], *, name: str | None = None
    ) -> ServiceProcess:
        """A started service process."""
        index = sum(1 for p in self.processes if p.service == service)
        process = ServiceProcess(service, env, self.log_dir, name=name or f"{service}-{index}")
        self.processes.append(process.start())
        return process

    @property
    def kills(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.processes:
            out[p.service] = out.get(p.service, 0) + p.kills
        return out

    def close(self) -> None:
        for process in self.processes:
            if process.alive and process.proc is not None:
                process.proc.kill()
                process.proc.wait(10)

    def logs(self) -> Iterator[tuple[str, str]]:
        for process in self.processes:
            yield process.name, process.log_tail()
