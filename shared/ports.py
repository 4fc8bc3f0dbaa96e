"""Whether a service's HTTP port is free, and how to say it is not: `tierstream run` asks
before it starts anything, each service before it serves (uvicorn's own "[Errno 98] address
already in use" named no variable)."""

from __future__ import annotations

import socket
from collections.abc import Mapping


def can_bind(host: str, port: int) -> bool:
    """Whether a service could listen on `host`:`port` now (an IPv6 host such as :: too: an
    IPv4 socket took it for a port in use). A host that does not resolve is left to the
    service to report."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError):
        return True
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by an earlier run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def ports_taken(addresses: Mapping[str, tuple[str, int]]) -> dict[str, int]:
    """{variable: port} of the `addresses` ({"INGEST_PORT": (host, port)}) another program
    holds."""
    return {name: port for name, (host, port) in addresses.items() if not can_bind(host, port)}


def in_use_line(taken: Mapping[str, int], command: str) -> str:
    """One line naming the ports' variables and how to start `command` on others."""
    return (
        f"in use by another program: {', '.join(f'{k}={v}' for k, v in taken.items())}"
        f" (another `tierstream run`? stop it, or set another port: {other_ports(taken, command)})"
    )


def other_ports(taken: Mapping[str, int], command: str) -> str:
    """`command` on other ports than `taken` ({"INGEST_PORT": 8080}): 10000 higher (lower,
    past 65535). "set another port" alone did not say how."""
    moved = [
        f"{name}={port + 10000 if port <= 55535 else port - 10000}" for name, port in taken.items()
    ]
    return f"{' '.join(moved)} {command}"
