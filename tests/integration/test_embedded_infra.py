"""Embedded infrastructure never outlives its owner, even one killed with SIGKILL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import psutil

OWNER = """
import time
from shared.embedded import EmbeddedKafka
broker = EmbeddedKafka().start()
print(broker._proc.pid, broker.port, flush=True)
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
    deadline = time.monotonic() + 5
    while (not _gone(pid) or _listening(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "the embedded broker outlived its owner"
    assert not _listening(port), "something still answers on the broker's port"
