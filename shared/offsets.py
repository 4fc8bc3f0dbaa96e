"""Consumed offsets stored in Postgres beside the state they produced, with a fence.

Each service keeps a `<schema>.consumer_offset(group_id, topic, partition, next_offset)`
table. A batch's offsets advance in the same transaction as its effects, and only if every
partition still holds the offset this consumer read at assignment (or its last commit):
a consumer that lost a partition in a rebalance (a zombie) fails the update, and its whole
transaction rolls back.

Beside the offset, the timestamp of the last record applied (`last_record_offset`, always
`next_offset - 1` when written, and `last_record_timestamp_ms`): an offset alone cannot
tell the log it was read from from another one (a topic created again, another cluster)
that has grown past it. The consumer reads that record again at assignment and compares
(shared/fenced_consumer.py). An older release advances `next_offset` without them: the
pair then names an offset that is no longer `next_offset - 1`, and is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from shared.pg import Connection, row_count

# Schema names are interpolated into SQL: only these, never input.
SCHEMAS = frozenset({"scorer", "actions"})


class Fenced(Exception):
    """Another consumer advanced a partition's offset: this batch must be rolled back."""


@dataclass(frozen=True)
class OffsetMove:
    """Advance one partition from `expected` (None: no row yet) to `next_offset`;
    `last_timestamp_ms`: the timestamp of the record at `next_offset - 1`, when it was read
    (None: a move that read no record, e.g. to a log's start)."""

    topic: str
    partition: int
    expected: int | None
    next_offset: int
    last_timestamp_ms: int | None = None


class StoredOffset(NamedTuple):
    """A partition's stored next offset, and the timestamp of the record before it (None when
    not known: not stored, or stored for another offset by an older release)."""

    next_offset: int
    last_timestamp_ms: int | None


def move_past(topic: str, partition: int, expected: int | None, record: Any) -> OffsetMove:
    """The move past `record`, a batch's last of its partition (an aiokafka ConsumerRecord)."""
    return OffsetMove(topic, partition, expected, record.offset + 1, record_time(record))


def record_time(record: Any) -> int | None:
    """A record's timestamp in milliseconds, None when it has none (-1)."""
    timestamp = record.timestamp
    return timestamp if isinstance(timestamp, int) and timestamp >= 0 else None


def _table(schema: str) -> str:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown offsets schema {schema!r}")
    return f"{schema}.consumer_offset"


async def load_offsets(
    conn: Connection, schema: str, group_id: str, partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], StoredOffset]:
    """Stored next offsets of the given (topic, partition)s; absent ones have no row."""
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset, CASE WHEN last_record_offset = next_offset - 1"
        f" THEN last_record_timestamp_ms END AS last_timestamp_ms FROM {_table(schema)}"
        " WHERE group_id = $1 AND (topic, partition) IN"
        " (SELECT * FROM unnest($2::text[], $3::int[]))",
        group_id, [t for t, _ in partitions], [p for _, p in partitions],
    )  # fmt: skip
    return {
        (row["topic"], row["partition"]): StoredOffset(row["next_offset"], row["last_timestamp_ms"])
        for row in rows
    }


async def advance_offsets(
    conn: Connection, schema: str, group_id: str, moves: Sequence[OffsetMove]
) -> None:
    """Fenced offset update: raises Fenced unless every partition still has `expected`."""
    table = _table(schema)
    moves = sorted(moves, key=lambda m: (m.topic, m.partition))  # one lock order for all
    updates = [m for m in moves if m.expected is not None]
    inserts = [m for m in moves if m.expected is None]
    done = 0
    if updates:
        done += row_count(await conn.execute(
            f"UPDATE {table} AS o SET next_offset = m.next_offset, updated_at = now(),"
            " last_record_offset = CASE WHEN m.stamp IS NOT NULL THEN m.next_offset - 1 END,"
            " last_record_timestamp_ms = m.stamp"
            " FROM unnest($2::text[], $3::int[], $4::int8[], $5::int8[], $6::int8[])"
            " AS m(topic, partition, expected, next_offset, stamp)"
            " WHERE o.group_id = $1 AND o.topic = m.topic AND o.partition = m.partition"
            " AND o.next_offset = m.expected",
            group_id, *_columns(updates),
        ))  # fmt: skip
    if inserts:
        done += row_count(await conn.execute(
            f"INSERT INTO {table} (group_id, topic, partition, next_offset, last_record_offset,"
            " last_record_timestamp_ms) SELECT $1, m.topic, m.partition, m.next_offset,"
            " CASE WHEN m.stamp IS NOT NULL THEN m.next_offset - 1 END, m.stamp"
            " FROM unnest($2::text[], $3::int[], $4::int8[], $5::int8[], $6::int8[])"
            " AS m(topic, partition, expected, next_offset, stamp) ON CONFLICT DO NOTHING",
            group_id, *_columns(inserts),
        ))  # fmt: skip
    if done != len(moves):
        raise Fenced(f"{len(moves) - done} of {len(moves)} partitions moved on without us")


def _columns(moves: Sequence[OffsetMove]) -> list[list[Any]]:
    return [
        [m.topic for m in moves], [m.partition for m in moves],
        [m.expected for m in moves], [m.next_offset for m in moves],
        [m.last_timestamp_ms for m in moves],
    ]  # fmt: skip
