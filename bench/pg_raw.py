"""Raw Postgres limit: events pre-aggregated per customer, COPY into a temp table, one merge.

Each batch (the scorer's batch size) is aggregated in Python, copied into a temporary
table and merged into a per-customer table with one INSERT ... ON CONFLICT, in one
transaction: the fastest way this server can absorb the events, with no Kafka and no
exactly-once bookkeeping. The aggregation is inside the timing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from bench.events import Event
from shared.contracts import CustomerLoggedIn, PurchaseMade

_COLUMNS = ("customer_id", "purchases", "spend", "logins", "tickets", "last_purchase_at",
            "last_event_at")  # fmt: skip
_TABLE = """
CREATE TABLE bench_customer (
    customer_id text PRIMARY KEY, purchases int NOT NULL, spend numeric NOT NULL,
    logins int NOT NULL, tickets int NOT NULL, last_purchase_at timestamptz,
    last_event_at timestamptz NOT NULL
)"""
_STAGE = "CREATE TEMP TABLE bench_stage (LIKE bench_customer) ON COMMIT DELETE ROWS"
_MERGE = """
INSERT INTO bench_customer SELECT * FROM bench_stage
ON CONFLICT (customer_id) DO UPDATE SET
    purchases = bench_customer.purchases + excluded.purchases,
    spend = bench_customer.spend + excluded.spend,
    logins = bench_customer.logins + excluded.logins,
    tickets = bench_customer.tickets + excluded.tickets,
    last_purchase_at = greatest(bench_customer.last_purchase_at, excluded.last_purchase_at),
    last_event_at = greatest(bench_customer.last_event_at, excluded.last_event_at)
"""


@dataclass
class _Sums:
    purchases: int = 0
    spend: Decimal = Decimal(0)
    logins: int = 0
    tickets: int = 0
    last_purchase_at: datetime | None = None
    last_event_at: datetime | None = None

    def add(self, event: Event) -> None:
        at = event.occurred_at
        self.last_event_at = at if self.last_event_at is None else max(self.last_event_at, at)
        if isinstance(event, PurchaseMade):
            self.purchases += 1
            self.spend += event.amount
            last = self.last_purchase_at
            self.last_purchase_at = at if last is None else max(last, at)
        elif isinstance(event, CustomerLoggedIn):
            self.logins += 1
        else:
            self.tickets += 1


def aggregate(events: Sequence[Event]) -> list[tuple[object, ...]]:
    """One row per customer of the batch, in `bench_customer` column order."""
    sums: dict[str, _Sums] = {}
    for event in events:
        sums.setdefault(event.customer_id, _Sums()).add(event)
    return [
        (c, s.purchases, s.spend, s.logins, s.tickets, s.last_purchase_at, s.last_event_at)
        for c, s in sums.items()
    ]


async def merge(
    conn: asyncpg.Connection[asyncpg.Record], events: Sequence[Event], batch: int
) -> float:
    """Absorb `events` batch by batch into a fresh table; returns seconds."""
    await conn.execute("DROP TABLE IF EXISTS bench_customer")
    await conn.execute(_TABLE)
    await conn.execute(_STAGE)
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        rows = aggregate(events[start : start + batch])
        async with conn.transaction():
            await conn.copy_records_to_table("bench_stage", records=rows, columns=_COLUMNS)
            await conn.execute(_MERGE)
    seconds = time.perf_counter() - started
    await conn.execute("DROP TABLE bench_stage")
    return seconds
