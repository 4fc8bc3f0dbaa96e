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
    batch, awaits included, so its other tasks (relay, API) run uncollected for that long,
    a bounded pause of cycle collection, not of memory reclamation.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
