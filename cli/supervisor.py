"""`tierstream run`: the whole system as child processes, restarted with back-off."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shared.embedded import die_with_parent

SERVICES = {"ingest": 8080, "scorer": 8081, "actions": 8082}


DEFAULT_HOST = "127.0.0.1"


def service_ports(env: Mapping[str, str]) -> dict[str, int]:
    """Each service's HTTP port, honouring INGEST_PORT / SCORER_PORT / ACTIONS_PORT."""
    return {name: int(env.get(f"{name.upper()}_PORT", port)) for name, port in SERVICES.items()}


def service_hosts(env: Mapping[str, str]) -> dict[str, str]:
    """Each service's bind address, honouring INGEST_HOST / SCORER_HOST / ACTIONS_HOST."""
    return {name: env.get(f"{name.upper()}_HOST", DEFAULT_HOST) for name in SERVICES}


def local_url(host: str, port: int) -> str:
    """The base URL at which this machine reaches a service bound to `host`:port. A wildcard
    address (0.0.0.0, ::) is no address to connect to: its loopback is."""
    wildcards = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 (read, not bound)
    host = wildcards.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def service_urls(env: Mapping[str, str]) -> dict[str, str]:
    """Each service's base URL on this machine, from its configured host and port."""
    hosts, ports = service_hosts(env), service_ports(env)
    return {name: local_url(hosts[name], ports[name]) for name in SERVICES}


@dataclass
class Child:
    """One supervised service process and its restart bookkeeping."""

    name: str
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    log: Callable[[str], None] = field(default=print)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env=dict(self.env),
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    def backoff(self) -> float:
        return float(min(30, 2 ** min(self.restarts, 5)))

    def check(self, now: float) -> None:
        """Restart a dead child after its back-off; a long healthy run resets the back-off."""
        if self.proc is not None and self.proc.poll() is None:
            if now - self.started_at > 60:
                self.restarts = 0
            return
        if self.proc is not None:
            code = self.proc.returncode
            self.proc = None
            self.restarts += 1
            self.next_start = now + self.backoff()
            self.log(f"{self.name} exited with {code}; restarting in {self.backoff():.0f}s")
        if now >= self.next_start:
            self.start()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(2)


class Supervisor:
    """Starts the services, keeps them alive, and stops them all within the grace period."""

    def __init__(
        self, env: Mapping[str, str], *, log: Callable[[str], None] = print, grace_s: float = 8.0
    ) -> None:
        self.children = [Child(name, env, log=log) for name in SERVICES]
        self.grace_s = grace_s
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            child.start()

    def tick(self) -> None:
        if not self.stopping:
            now = time.monotonic()
            for child in self.children:
                child.check(now)

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + self.grace_s
        for child in self.children:
            child.wait_or_kill(deadline)
