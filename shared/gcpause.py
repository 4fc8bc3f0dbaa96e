"""Cyclic garbage collection held off during a synchronous stretch of work, then let run
(ingest's request building and the scorer's batch folding both allocate heavily)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Run a synchronous stretch of work without cyclic garbage collections.

    A request or a batch builds tens of thousands of short-lived, acyclic objects (decoded
    JSON, models, records), freed by reference counting. The collector would otherwise
    walk them, and everything else the process holds, many times over: a third of the CPU
    time of both ingest and the scorer, measured. Cycles made meanwhile are collected
    afterwards. Ingest wraps only code without `await`; the scorer holds it across a whole
    consumer step (poll, batch, publish), awaits included, so its other tasks (relay, API)
    run uncollected for that long: a poll's wait when idle, a batch's transactions under
    load, up to the producer's or the pool's timeouts in an outage (a step that fails
    re-enables it). It pauses cycle collection only, not memory reclamation.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# CPython's default (700, 10, 10) collects the young generation every 700 net allocations
# and the whole heap whenever its pending long-lived objects reach a quarter of it. The
# scorer keeps tens of thousands of decoded customer states (its state cache) that every
# batch adds to, so the collector kept re-walking them: raising the thresholds made the
# bench's scorer drain 7-20 % faster (interleaved runs, docs/PERFORMANCE.md) with the same
# RSS. Cyclic garbage is still collected, only in fewer, larger rounds.
LONG_LIVED_HEAP_THRESHOLDS = (50_000, 20, 100)


def collect_less_often() -> None:
    """Set the collector's thresholds for a process holding a large long-lived heap."""
    gc.set_threshold(*LONG_LIVED_HEAP_THRESHOLDS)
