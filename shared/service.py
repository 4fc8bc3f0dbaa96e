"""Run one service: uvicorn plus background loops, stopped cleanly by SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI

from shared.logging import get_logger

log = get_logger(__name__)
Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def run_service(main: Coroutine[Any, Any, None], *, event_loop: str) -> None:
    """Run a service's main coroutine to the end on the chosen event loop
    (`ServiceSettings.event_loop`, which holds the default)."""
    from aiokafka.errors import KafkaConnectionError

    factory = loop_factory(event_loop)
    log.info("event loop", loop="asyncio" if factory is None else "uvloop")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    except (KafkaConnectionError, ConnectionRefusedError) as exc:
        # At start (topics, migrations): the broker or the database is not there. One line,
        # not a hundred of traceback; exit 1, so a supervisor starts the service again.
        log.error("cannot start: a broker or database is unreachable", error=str(exc) or repr(exc))
        raise SystemExit(1) from None


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
