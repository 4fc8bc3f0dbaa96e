"""One consumed batch, applied in one Postgres transaction (the effectively-once unit)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.scorer import store
from services.scorer.db import Pool
from services.scorer.evaluation import (
    ChangeRecord,
    Scoring,
    distinct_events,
    fold_batch,
    saved_records,
)
from services.scorer.state_cache import StateCache
from shared.domain.state import Event
from shared.offsets import OffsetMove


@dataclass(frozen=True)
class BatchResult:
    """What a committed batch did: events counted per (type, outcome), the changes, and
    how many customers' catch-ups were cut short (`evaluation.Evaluated`)."""

    outcomes: Counter[tuple[str, str]]
    changes: list[ChangeRecord]
    cut_short: int = 0


async def apply_batch(
    pool: Pool,
    events: Sequence[Event],
    moves: Sequence[OffsetMove],
    *,
    group_id: str,
    scoring: Scoring,
    now: datetime,
    trace_of: Callable[[Event], str | None] = lambda _: None,
    cache: StateCache | None = None,
) -> BatchResult:
    """Claim, fold, classify, write state + outbox, advance offsets: all or nothing.

    With a `cache`, customers it holds at their stored version skip the state read, and
    the committed records go back into it (services/scorer/state_cache.py).
    Raises `shared.offsets.Fenced` (and rolls back) when another consumer owns a partition.
    """
    unique = distinct_events(events)
    async with pool.acquire() as conn, conn.transaction():
        fresh_ids = (
            await store.claim_events(conn, [e.event_id for e in unique]) if unique else set()
        )
        fresh = [e for e in unique if e.event_id in fresh_ids]
        customer_ids = [e.customer_id for e in fresh]
        records = (
            await store.lock_customers(conn, customer_ids, now=now, cache=cache) if fresh else []
        )
        outcome = fold_batch(records, fresh, scoring, now=now, trace_of=trace_of)
        await store.save_outcome(conn, outcome)
        await store.advance_offsets(conn, group_id, moves)
    if cache is not None:  # committed: these are now the stored states
        cache.put(saved_records(records, outcome))
    processed = Counter(e.type for e in fresh)
    duplicates = Counter(e.type for e in events) - processed
    counts: Counter[tuple[str, str]] = Counter()
    counts.update({(t, "processed"): n for t, n in processed.items()})
    counts.update({(t, "duplicate"): n for t, n in duplicates.items()})
    return BatchResult(counts, outcome.changes, len(outcome.cut_short))
