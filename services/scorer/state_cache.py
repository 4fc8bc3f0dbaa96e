"""Decoded customer records the scorer committed, kept in memory and checked by row version.

Decoding a stored state (JSON text -> dataclasses) cost about a tenth of the scorer's CPU,
and the text is what this process wrote a moment ago. Each `scorer.customer` row carries
a `version` that every write increments, so a cached record is used only when the locked
row still has the version this process wrote; any other writer (another scorer process,
the sweeper, a rules migration) bumps it and the stored text is read instead.

An entry is *taken* (removed) before its batch runs: the fold mutates the record in
place, and a transaction that rolls back must not leave its half-applied state behind.
Only after the commit does the batch put the new records back. No I/O here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.scorer.evaluation import CustomerRecord


@dataclass
class CacheCounts:
    """What the cache answered since it was made (for the metrics)."""

    hits: int = 0
    misses: int = 0
    stale: int = 0  # held, but the row was written elsewhere since


class StateCache:
    """Up to `capacity` records by customer id, least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts = CacheCounts()
        self._entries: OrderedDict[str, CustomerRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, customer_ids: Iterable[str]) -> dict[str, CustomerRecord]:
        """Remove and return the held records of these customers (the caller owns them)."""
        pop = self._entries.pop
        taken = {}
        for customer_id in customer_ids:
            record = pop(customer_id, None)
            if record is not None:
                taken[customer_id] = record
        return taken

    def count(self, *, hits: int, misses: int, stale: int) -> None:
        """Record how the taken records compared with the locked rows."""
        self.counts.hits += hits
        self.counts.misses += misses
        self.counts.stale += stale

    def drain_counts(self) -> CacheCounts:
        """The counts since the last drain (then zero again)."""
        counts, self.counts = self.counts, CacheCounts()
        return counts

    def put(self, records: Iterable[CustomerRecord]) -> None:
        """Hold committed records (their `version` is the row's version after the commit)."""
        if self.capacity <= 0:
            return
        entries = self._entries
        for record in records:
            entries[record.customer_id] = record
            entries.move_to_end(record.customer_id)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
