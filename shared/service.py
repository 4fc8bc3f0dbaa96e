"""Run one service: uvicorn plus background loops, stopped cleanly by SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from shared.logging import get_logger
from shared.ports import in_use_line, ports_taken
from shared.settings import ServiceSettings, env_name, settings_or_exit

log = get_logger(__name__)
Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
Settings = TypeVar("Settings", bound=ServiceSettings)


def service_settings(cls: type[Settings]) -> Settings:
    """A service's settings and the shared tracing settings, checked before anything starts
    (one line and exit 2 for a bad value: the tracer is made only after connecting), and its
    port (one line and exit 1 when another program holds it)."""
    from shared.tracing import TracingSettings

    settings = settings_or_exit(cls)
    settings_or_exit(TracingSettings)
    refuse_taken_port(cls, settings)
    return settings


def refuse_taken_port(cls: type[ServiceSettings], settings: ServiceSettings) -> None:
    """Exit 1 after one line naming the port's variable when another program holds the port:
    uvicorn found it after the broker and the database, logged "[Errno 98] address already
    in use" and exited 3, naming neither INGEST_PORT nor what to do."""
    variable = env_name(cls, "port")
    if taken := ports_taken({variable: (settings.host, settings.port)}):
        service = variable.removesuffix("_PORT").lower()
        print(f"cannot start: {in_use_line(taken, f'tierstream {service}')}", file=sys.stderr)
        raise SystemExit(1)


def run_service(main: Coroutine[Any, Any, None], *, event_loop: str) -> None:
    """Run a service's main coroutine to the end on the chosen event loop
    (`ServiceSettings.event_loop`, which holds the default)."""
    factory = loop_factory(event_loop)
    log.info("event loop", loop="asyncio" if factory is None else "uvloop")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    except Exception as exc:
        found = start_failure(exc)
        if found is None:
            raise  # not the surroundings but a bug: its traceback is what is needed
        # At start (topics, migrations, first queries): the broker or the database is not
        # there, or not as configured. One line, not a hundred of traceback; exit 1, so a
        # supervisor starts the service again.
        reason, error = found
        log.error(f"cannot start: {reason}", error=error)
        raise SystemExit(1) from None


def start_failure(exc: BaseException) -> tuple[str, str] | None:
    """What in the service's surroundings stopped it from starting, and the error's first
    line (None: nothing known, a bug). The causes are searched too: SQLAlchemy (under the
    migrations) wraps the driver's errors."""
    for cause in _causes(exc):
        for kinds, reason in _start_failures():
            if isinstance(cause, kinds):
                return reason, (str(cause) or repr(cause)).splitlines()[0]
    return None


def _start_failures() -> list[tuple[tuple[type[BaseException], ...], str]]:
    import asyncpg
    from aiokafka.errors import KafkaConnectionError
    from sqlalchemy.exc import ArgumentError

    from shared.migrations import SchemaBehind
    from shared.served_namespace import OtherNamespace

    refused = "the database refused the connection: check DATABASE_URL's database and user"
    not_migrated = "the database is not migrated: run `tierstream migrate`"
    return [
        ((KafkaConnectionError, ConnectionRefusedError), "a broker or database is unreachable"),
        ((socket.gaierror,), "a broker or database host name does not resolve"),
        (
            (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError),
            refused,
        ),
        # SchemaBehind's own line names the schema's revision and the release's latest.
        ((asyncpg.UndefinedTableError, SchemaBehind), not_migrated),
        ((ArgumentError,), "DATABASE_URL is not a database URL"),
        # Its own line names both namespaces and the two ways out.
        ((OtherNamespace,), "the database serves another topic namespace"),
    ]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's `orig`) or was raised from, and so on; not what
    it was raised while handling (a bug in an `except` block is still a bug)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for `auto` (when installed) and `uvloop`; None: asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "TIERSTREAM_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: our stop event owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set the stop event; loops drain and return."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def serve(
    app: FastAPI,
    *,
    host: str,
    port: int,
    loops: Sequence[Loop] = (),
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
) -> None:
    """Serve `app` and run `loops` until `stop` is set or one loop fails."""
    stop = stop or asyncio.Event()
    if install_signals:
        install_stop_signals(stop)
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = _Server(config)
    tasks = [asyncio.create_task(server.serve(), name="http")]
    tasks += [
        asyncio.create_task(loop(stop), name=getattr(loop, "__name__", "loop")) for loop in loops
    ]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception():
                log.error("task failed", task=task.get_name(), exc_info=task.exception())
    finally:
        stop.set()
        server.should_exit = True
        _, pending = await asyncio.wait(tasks, timeout=8)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()
    failed = [t for t in tasks if not t.cancelled() and t.exception() is not None]
    if failed:
        raise SystemExit(f"{failed[0].get_name()} failed: {failed[0].exception()!r}")
