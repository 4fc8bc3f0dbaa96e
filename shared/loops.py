"""Background loops that survive outages: retry with back-off, never crash on a bad iteration."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from shared.logging import get_logger

log = get_logger(__name__)

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0
Step = Callable[[], Awaitable[bool]]


async def wait_for_any(events: list[asyncio.Event], seconds: float) -> None:
    """Return when one of `events` is set or `seconds` passed, whichever comes first."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)


async def run_loop(
    name: str,
    step: Step,
    stop: asyncio.Event,
    *,
    idle_s: float,
    errors: Counter,
    wake: asyncio.Event | None = None,
) -> None:
    """Call `step` until `stop`; it returns True when busy (call again at once).

    An idle step waits `idle_s` (or until `wake` is set). A failing step is logged,
    counted and retried with exponential back-off: a Postgres or broker outage pauses
    the loop instead of crashing the process.
    """
    delay = BACKOFF_START_S
    wakers = [stop] if wake is None else [stop, wake]
    while not stop.is_set():
        try:
            busy = await step()
        except Exception as exc:  # an outage or a bug: keep the service up, say so loudly
            errors.labels(name).inc()
            # The first failure of a run of them with its traceback (a bug shows where it
            # is); the retries in one line each, or an outage floods the log.
            first = delay == BACKOFF_START_S
            log.warning("loop iteration failed", loop=name, error=repr(exc), retry_in_s=delay,
                        exc_info=exc if first else None)  # fmt: skip
            await wait_for_any([stop], delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            continue
        delay = BACKOFF_START_S
        if not busy:
            await wait_for_any(wakers, idle_s)
            if wake is not None:
                wake.clear()
