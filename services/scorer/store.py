"""SQL of the write path: inbox, customer rows, tier-change outbox, fenced offsets.

Every function runs bulk statements on a connection inside the caller's transaction;
none makes a round trip per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.scorer import codec
from services.scorer.db import Connection
from services.scorer.evaluation import ChangeRecord, CustomerRecord, CustomerUpdate, Outcome
from services.scorer.state_cache import StateCache
from shared import offsets
from shared.group_progress import fetch_in_scope
from shared.offsets import OffsetMove
from shared.partition_scope import EVERYTHING, PartitionScope


async def claim_events(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Insert ids into the inbox; returns those not seen before (redeliveries drop out)."""
    # Sorted so that two transactions claiming the same ids lock them in the same order.
    rows = await conn.fetch(
        "INSERT INTO scorer.inbox (event_id) SELECT e FROM unnest($1::text[]) AS e ORDER BY e"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        sorted(set(event_ids)),
    )
    return {row["event_id"] for row in rows}


CUSTOMER_COLUMNS = (
    "customer_id, version, state, value_tier, activity_level, lifecycle_stage, class_since"
)
# A customer's review time as a scalar subquery, not a join: one primary-key probe per
# row whatever plan a prepared statement keeps (see _BY_IDS). With `updated_at`, for
# `_due_at`; the review row is read, not locked.
_REVIEW_COLUMNS = (
    "updated_at, (SELECT r.next_review_at FROM scorer.customer_review AS r"
    " WHERE r.customer_id = customer.customer_id) AS next_review_at"
)
# Customers to lock and re-evaluate, with when they fell due (`_record`) and the cut points
# they were scored with (re-bucketing catches them up with those).
_SELECT_CUSTOMER = (
    f"SELECT {CUSTOMER_COLUMNS}, cut_points_version, {_REVIEW_COLUMNS} FROM scorer.customer"
)
# Customer rows by id as a join with the id array, not `customer_id = ANY($1)`: a prepared
# statement may keep a generic plan made while the table was small (until its first
# ANALYZE), and for `= ANY($1)` that plan scans the whole table and compares every row
# with every id (450 ms for 1,000 of 25,000 customers); the join's plan made on the same
# small table hashes the ids and reads the table once (6 ms).
_BY_IDS = "FROM unnest($1::text[]) AS wanted(id) JOIN scorer.customer ON customer_id = wanted.id"
# A customer's two rows: the wide one and its review time (migration 0005); a review row
# already there (left by a customer row deleted by hand) is kept.
_ADD_CUSTOMERS = (
    "WITH added AS (INSERT INTO scorer.customer (customer_id, created_at, updated_at)"
    " SELECT c, $2, $2 FROM unnest($1::text[]) AS c ORDER BY c ON CONFLICT DO NOTHING"
    " RETURNING customer_id)"
    " INSERT INTO scorer.customer_review (customer_id)"
    " SELECT customer_id FROM added ORDER BY customer_id ON CONFLICT DO NOTHING"
)
LOCK_CUSTOMERS = (
    f"SELECT customer_id, version, state IS NULL AS empty {_BY_IDS}"
    " ORDER BY customer_id FOR UPDATE OF customer"
)
# With the review time: read after the lock, it is the one the locked row was saved with. A
# held record carries the review time this process saved with it (`saved_records`).
READ_CUSTOMERS = f"SELECT {CUSTOMER_COLUMNS}, {_REVIEW_COLUMNS} {_BY_IDS}"


async def lock_customers(
    conn: Connection,
    customer_ids: Sequence[str],
    *,
    now: datetime,
    cache: StateCache | None = None,
) -> list[CustomerRecord]:
    """Create missing rows, then lock every given customer in id order (no deadlocks).

    A record `cache` holds at the locked row's version is used as it is; only the other
    customers' stored state is read (and decoded).
    """
    ids = sorted(set(customer_ids))
    held = cache.take(ids) if cache is not None else {}
    # The placeholder insert makes a concurrent first event of the same customer wait
    # for us instead of overwriting our row with a state that missed our events. A held
    # customer's row exists already (this process committed it; rows are never deleted).
    if new_ids := [customer_id for customer_id in ids if customer_id not in held]:
        await conn.execute(_ADD_CUSTOMERS, new_ids, now)
    # Lock first and learn each row's version (after any wait, FOR UPDATE sees the row as
    # its last writer committed it); the state text is read only where needed.
    locked = await conn.fetch(LOCK_CUSTOMERS, ids)
    if len(locked) != len(ids):  # only if someone deleted customer rows under a running scorer
        raise RuntimeError(f"{len(ids) - len(locked)} customer rows disappeared while scoring")
    records: dict[str, CustomerRecord] = {}
    unread: list[str] = []
    hits = 0
    for row in locked:
        customer_id, version = row["customer_id"], row["version"]
        record = held.get(customer_id)
        if record is not None and record.version == version:
            records[customer_id] = record
            hits += 1
        elif row["empty"]:
            records[customer_id] = CustomerRecord.empty(customer_id, version)
        else:
            unread.append(customer_id)
    if cache is not None:  # stale: held, but another writer has changed the row since
        misses = sum(1 for customer_id in unread if customer_id not in held)
        cache.count(hits=hits, misses=misses, stale=len(held) - hits)
    if unread:  # locked by us above: this read sees exactly what we locked
        rows = await conn.fetch(READ_CUSTOMERS, unread)
        records.update((row["customer_id"], _record(row)) for row in rows)
    return [records[row["customer_id"]] for row in locked]


def _due_at(row: Any) -> datetime | None:
    """When a locked customer's stored classes may stop being current: its review time.

    A review time not after the row's last evaluation (`updated_at`: each evaluation sets
    a later one) was read before a writer holding the row committed: when a statement that
    reads and locks waits for a row lock, Postgres then re-reads the locked row, not the
    review row read with it. That writer evaluated the customer at `updated_at`; catching
    up from there finds the real review time.
    """
    review: datetime | None = row["next_review_at"]
    if review is None:
        return None
    updated: datetime = row["updated_at"]
    return review if review > updated else updated


# The review index finds the due customers; their customer rows are what is locked (the
# consumer locks the same rows, so the two never evaluate one customer at once). While some
# partitions are held (shared/partition_scope.py), only customers of the read ones.
CLAIM_DUE = (
    f"SELECT {', '.join(f'c.{name}' for name in CUSTOMER_COLUMNS.split(', '))}, c.updated_at,"
    " r.next_review_at"
    " FROM scorer.customer_review AS r JOIN scorer.customer AS c USING (customer_id)"
    " WHERE r.next_review_at <= $1{partitions}"
    " ORDER BY r.next_review_at LIMIT $2 FOR UPDATE OF c SKIP LOCKED"
)


async def read_customer(conn: Connection, customer_id: str) -> CustomerRecord:
    """A customer as stored, unlocked (a new one when there is no row yet)."""
    rows = await conn.fetch(READ_CUSTOMERS, [customer_id])
    if not rows or rows[0]["state"] is None:
        return CustomerRecord.empty(customer_id, 0)
    return customer_record(rows[0])


def customer_record(row: Any) -> CustomerRecord:
    """A `scorer.customer` row (CUSTOMER_COLUMNS, JSON as text) as a CustomerRecord."""
    return CustomerRecord.from_row(_decoded(row))


async def claim_due_customers(
    conn: Connection, *, now: datetime, limit: int, scope: PartitionScope = EVERYTHING
) -> list[tuple[CustomerRecord, datetime]]:
    """Lock customers in `scope` whose next review time has come, with that time; skip those
    another tx holds.

    The time is `_due_at`'s: a writer that committed after this statement's snapshot and
    before its lock (another sweep, the consumer) leaves the locked row new and the review
    row as the snapshot saw it, and catching up from that time would replay, over classes
    already moved on, the changes that writer made.
    """
    rows = await _fetch_in(conn, CLAIM_DUE, scope, now, limit, column="r.customer_id")
    return [(CustomerRecord.from_row(_decoded(row)), _due(row)) for row in rows]


def _due(row: Any) -> datetime:
    due = _due_at(row)
    assert due is not None  # claimed for its review time
    return due


async def claim_outdated_customers(
    conn: Connection,
    *,
    rules_version: str,
    limit: int,
    scope: PartitionScope = EVERYTHING,
    skip: Sequence[str] = (),
) -> list[CustomerRecord]:
    """Lock customers in `scope` last classified under other rules (after a rules change),
    but not those in `skip`."""
    query = (
        f"{_SELECT_CUSTOMER} WHERE state IS NOT NULL AND rules_version IS DISTINCT FROM $1"
        " AND customer_id <> ALL($2::text[]){partitions} LIMIT $3 FOR UPDATE SKIP LOCKED"
    )
    rows = await _fetch_in(conn, query, scope, rules_version, list(skip), limit)
    return [_record(row) for row in rows]


async def postpone_reviews(conn: Connection, customer_ids: Sequence[str], until: datetime) -> None:
    """Move the review time of customers (rows the caller holds) to `until`.

    Their version moves too: a record a state cache holds carries the old review time.
    """
    await conn.execute(
        "WITH moved AS (UPDATE scorer.customer_review SET next_review_at = $2"
        " WHERE customer_id = ANY($1::text[]))"
        " UPDATE scorer.customer SET version = version + 1 WHERE customer_id = ANY($1::text[])",
        list(customer_ids),
        until,
    )


async def lock_rebucket_page(
    conn: Connection,
    *,
    cut_points_version: str,
    after: str,
    limit: int,
    scope: PartitionScope = EVERYTHING,
) -> list[tuple[CustomerRecord, str | None]]:
    """Lock the next page, in id order after `after`, of classified customers in `scope`
    not scored with `cut_points_version` (re-bucketing walks them), each with the version
    it was scored with."""
    query = (
        f"{_SELECT_CUSTOMER} WHERE customer_id > $1 AND state IS NOT NULL"
        " AND cut_points_version IS DISTINCT FROM $2{partitions}"
        " ORDER BY customer_id LIMIT $3 FOR UPDATE"
    )
    rows = await _fetch_in(conn, query, scope, after, cut_points_version, limit)
    return [(_record(row), row["cut_points_version"]) for row in rows]


def _record(row: Any) -> CustomerRecord:
    """A locked customer's row (with `_REVIEW_COLUMNS`) as a CustomerRecord, with when it
    falls due."""
    record = CustomerRecord.from_row(_decoded(row))
    record.due_at = _due_at(row)
    return record


async def _fetch_in(
    conn: Connection, query: str, scope: PartitionScope, *args: Any, column: str = "customer_id"
) -> list[Any]:
    return await fetch_in_scope(conn, query, scope, *args, schema="scorer", column=column)


def _decoded(row: Any) -> dict[str, Any]:
    data = dict(row)
    if isinstance(data.get("state"), str):
        data["state"] = codec.loads(data["state"], user_values=codec.state_attributes)
    if isinstance(data.get("class_since"), str):
        data["class_since"] = codec.loads(data["class_since"])
    return data


async def save_outcome(conn: Connection, outcome: Outcome) -> None:
    """Write what an evaluation pass decided: the customer rows, then their tier changes."""
    await save_customers(conn, outcome.updates)
    await insert_changes(conn, outcome.changes)


async def save_customers(conn: Connection, updates: Sequence[CustomerUpdate]) -> None:
    """Write the new state and classification of every updated customer.

    One statement per distinct (rules version, cut points version, update time): one for
    the updates of one evaluation pass. Those three go as single parameters, not arrays:
    asyncpg checks every array element in Python before encoding it.
    """
    groups: dict[tuple[str, str | None, datetime], list[CustomerUpdate]] = {}
    for update in updates:
        groups.setdefault(update.shared_values(), []).append(update)
    for shared, group in groups.items():
        columns = zip(*(u.as_row() for u in group), strict=True)
        await conn.execute(_SAVE_CUSTOMERS, *[list(column) for column in columns], *shared)


# Both of a customer's rows in one statement. The wide row changes no indexed column
# unless a class changed, so it is mostly a HOT update; the review row is written only when
# the review time moved (migration 0005).
_SAVE_CUSTOMERS = """
    WITH review AS (
        UPDATE scorer.customer_review AS r SET next_review_at = v.next_review_at
        FROM unnest($1::text[], $10::timestamptz[]) AS v(customer_id, next_review_at)
        WHERE r.customer_id = v.customer_id
          AND r.next_review_at IS DISTINCT FROM v.next_review_at
    )
    UPDATE scorer.customer AS c SET
        state = u.state, value_tier = u.value_tier, activity_level = u.activity_level,
        lifecycle_stage = u.lifecycle_stage, r_score = u.r_score, f_score = u.f_score,
        m_score = u.m_score, class_since = u.class_since, rules_version = $11,
        cut_points_version = $12, updated_at = $13, version = c.version + 1
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int2[],
                $7::int2[], $8::int2[], $9::jsonb[])
        AS u(customer_id, state, value_tier, activity_level, lifecycle_stage, r_score,
             f_score, m_score, class_since)
    WHERE c.customer_id = u.customer_id
"""


_CHANGE_COLUMNS = (
    "id", "customer_id", "dimension", "from_class", "to_class", "cause", "rule", "features",
    "attributes", "rules_version", "occurred_at", "emitted_at", "traceparent",
)  # fmt: skip


async def insert_changes(conn: Connection, changes: Sequence[ChangeRecord]) -> None:
    """Append tier changes to the outbox (= the history); `seq` follows list order."""
    if not changes:
        return
    # COPY (binary) takes rows about twice as fast as INSERT ... SELECT FROM unnest(...).
    await conn.copy_records_to_table(
        "tier_change", schema_name="scorer", columns=_CHANGE_COLUMNS,
        records=[c.as_row() for c in changes],
    )  # fmt: skip


async def advance_offsets(conn: Connection, group_id: str, moves: Sequence[OffsetMove]) -> None:
    """Fenced offset update in this service's schema (see shared/offsets.py)."""
    await offsets.advance_offsets(conn, "scorer", group_id, moves)


async def activate_rules(conn: Connection, version: str) -> None:
    """Record `version` as the rules file started last (migration 0007)."""
    await conn.execute(
        "INSERT INTO scorer.rules_activation (version) VALUES ($1)"
        " ON CONFLICT (version) DO UPDATE SET activated_at = clock_timestamp()",
        version,
    )


async def active_rules_version(conn: Connection) -> str | None:
    """The rules version started last, if any process recorded one."""
    version: str | None = await conn.fetchval(
        "SELECT version FROM scorer.rules_activation ORDER BY activated_at DESC LIMIT 1"
    )
    return version
