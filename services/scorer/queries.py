"""SQL of the read side: one customer, filtered pages, change history, class counts; on a
connection the caller holds (the API's) or on the pool."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.scorer.db import Queryable
from services.scorer.evaluation import ChangeRecord, CustomerRecord
from services.scorer.relay import change_from_row
from shared.contracts import Dimension

_CUSTOMER_COLUMNS = (
    "customer_id, state, value_tier, activity_level, lifecycle_stage, class_since,"
    " r_score, f_score, m_score, rules_version, updated_at"
)


# A change's publication time (null while it is pending), looked up for the page's rows
# only: as a join, the planner merged the whole published table up to the cursor (37 ms
# for a page 150,000 changes in, growing with the history) instead of 0.45 ms.
_FEED_COLUMNS = (
    "c.seq, c.id, c.customer_id, c.dimension, c.from_class, c.to_class, c.cause, c.rule,"
    " c.features, c.attributes, c.rules_version, c.occurred_at, c.emitted_at, p.published_at"
)
_CHANGE_COLUMNS = (
    "seq, id, customer_id, dimension, from_class, to_class, cause, rule, features,"
    " attributes, rules_version, occurred_at, emitted_at, (SELECT p.published_at"
    " FROM scorer.tier_change_published AS p WHERE p.seq = c.seq) AS published_at"
)


@dataclass(frozen=True)
class StoredCustomer:
    """A classified customer as stored: the record plus its scores and bookkeeping."""

    record: CustomerRecord
    row: asyncpg.Record


@dataclass(frozen=True)
class StoredChange:
    """A tier change from the history: its position in the list it was read from (the
    cursor), its own `seq` (the order of the customer's changes: the relay's
    `tierstream_seq` header) and its publication time."""

    position: int
    seq: int
    change: ChangeRecord
    published_at: object


def _stored(row: asyncpg.Record) -> StoredCustomer:
    data = dict(row)
    data["state"] = json.loads(data["state"])
    data["class_since"] = json.loads(data["class_since"])
    return StoredCustomer(CustomerRecord.from_row(data), row)


async def fetch_customer(db: Queryable, customer_id: str) -> StoredCustomer | None:
    """One classified customer, or None."""
    row = await db.fetchrow(
        f"SELECT {_CUSTOMER_COLUMNS} FROM scorer.customer"
        " WHERE customer_id = $1 AND state IS NOT NULL",
        customer_id,
    )
    return _stored(row) if row is not None else None


async def list_customers(
    db: Queryable, *, classes: Mapping[Dimension, str], after: str | None, limit: int
) -> list[StoredCustomer]:
    """Classified customers in id order, filtered by class, after a cursor id."""
    where: list[str] = ["state IS NOT NULL"]
    args: list[object] = []
    for dimension, value in sorted(classes.items()):
        args.append(value)
        where.append(f"{dimension.value} = ${len(args)}")  # column names come from the enum
    if after is not None:
        args.append(after)
        where.append(f"customer_id > ${len(args)}")
    args.append(limit)
    rows = await db.fetch(
        f"SELECT {_CUSTOMER_COLUMNS} FROM scorer.customer WHERE {' AND '.join(where)}"
        f" ORDER BY customer_id LIMIT ${len(args)}",
        *args,
    )
    return [_stored(row) for row in rows]


async def list_changes(
    db: Queryable, customer_id: str, *, after_seq: int | None, limit: int
) -> list[StoredChange]:
    """A customer's tier changes, oldest first, after a cursor position."""
    rows = await db.fetch(
        f"SELECT {_CHANGE_COLUMNS} FROM scorer.tier_change AS c"
        " WHERE customer_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        customer_id,
        after_seq if after_seq is not None else 0,
        limit,
    )
    return [
        StoredChange(row["seq"], row["seq"], change_from_row(row), row["published_at"])
        for row in rows
    ]


async def list_all_changes(
    db: Queryable,
    *,
    since: datetime | None,
    dimension: str | None,
    after_seq: int | None,
    limit: int,
) -> list[StoredChange]:
    """Every customer's published tier changes in publication order (`seq` is the position
    in it, `pub_seq`), optionally since an event time.

    Not in insertion order: a change committed late would fall behind a cursor already past
    it (migration 0006).
    """
    rows = await db.fetch(
        f"SELECT p.pub_seq, {_FEED_COLUMNS} FROM scorer.tier_change_published AS p"
        " JOIN scorer.tier_change AS c USING (seq) WHERE p.pub_seq > $1"
        " AND ($2::timestamptz IS NULL OR c.occurred_at >= $2)"
        " AND ($3::text IS NULL OR c.dimension = $3) ORDER BY p.pub_seq LIMIT $4",
        after_seq if after_seq is not None else 0, since, dimension, limit,
    )  # fmt: skip
    return [
        StoredChange(row["pub_seq"], row["seq"], change_from_row(row), row["published_at"])
        for row in rows
    ]


async def feed_end(db: Queryable) -> int | None:
    """The last publication position (`pub_seq`), None before the first. Numbers are drawn
    in commit order (migration 0006), so every later publication comes after it."""
    end: int | None = await db.fetchval("SELECT max(pub_seq) FROM scorer.tier_change_published")
    return end


async def oldest_pending_emitted_at(db: Queryable) -> datetime | None:
    """When the oldest tier change the relay has not published yet was decided (None: all
    published). Two index look-ups: the pending table's first seq, then its change."""
    emitted: datetime | None = await db.fetchval(
        "SELECT emitted_at FROM scorer.tier_change"
        " WHERE seq = (SELECT min(seq) FROM scorer.tier_change_pending)"
    )
    return emitted


async def count_classes(db: Queryable) -> tuple[int, dict[Dimension, dict[str, int]]]:
    """Classified customers in total and per dimension and class (one scan)."""
    rows = await db.fetch(
        "SELECT value_tier, activity_level, lifecycle_stage, count(*) AS n,"
        " GROUPING(value_tier) AS gv, GROUPING(activity_level) AS ga,"
        " GROUPING(lifecycle_stage) AS gl"
        " FROM scorer.customer WHERE state IS NOT NULL"
        " GROUP BY GROUPING SETS ((value_tier), (activity_level), (lifecycle_stage), ())"
    )
    counts: dict[Dimension, dict[str, int]] = {d: {} for d in Dimension}
    total = 0
    flags = {Dimension.VALUE_TIER: "gv", Dimension.ACTIVITY_LEVEL: "ga",
             Dimension.LIFECYCLE_STAGE: "gl"}  # fmt: skip
    for row in rows:
        grouped = [d for d, flag in flags.items() if row[flag] == 0]
        if not grouped:
            total = row["n"]
        for dimension in grouped:
            counts[dimension][row[dimension.value]] = row["n"]
    return total, counts
