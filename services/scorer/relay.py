"""The outbox relay: publish pending `tier_change` rows in seq order, then mark them.

One relay at a time per database (an advisory lock), so each customer's changes reach
the topic in the order they were decided. Publishing moves a change's seq from
`tier_change_pending` to `tier_change_published` (with the time) in the same transaction;
a crash between the broker's ack and that commit republishes rows with the same id, and
subscribers de-duplicate by it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from datetime import datetime

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from services.scorer.db import Connection, Pool
from services.scorer.evaluation import ChangeRecord
from services.scorer.metrics import ScorerMetrics
from shared.clock import Clock
from shared.contracts import TIER_CHANGED_TYPE, ChangeCause, Dimension
from shared.kafka import CHANGE_SEQ_HEADER, Headers, cloudevent_headers
from shared.kafka_batches import KeyPartitioner, Record, build_batches, send_in_order, size_over
from shared.logging import get_logger

log = get_logger(__name__)
_debug = logging.getLogger(__name__)  # per-change lines only when debug is on (they cost)

# Arbitrary constant naming "the scorer's outbox relay" among advisory locks.
RELAY_LOCK_KEY = 0x7469_6572_7265_6C01
CE_SOURCE = "tierstream/scorer"
# Put on a change published without its attributes (its record was over the broker's limit).
TRIMMED_HEADER = "tierstream_trimmed"


class OutboxRelay:
    """Publishes the outbox to the tier-changed topic."""

    def __init__(
        self,
        pool: Pool,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        batch: int,
        clock: Clock,
        metrics: ScorerMetrics,
        max_message_bytes: int = 1_048_588,
    ) -> None:
        self.pool, self.producer, self.topic, self.batch = pool, producer, topic, batch
        self.clock, self.metrics = clock, metrics
        self.max_message_bytes = max_message_bytes
        self.partitioner = KeyPartitioner()
        self.locked_out = False  # the last step found another round holding the lock

    async def step(self) -> bool:
        """Publish one batch of unpublished changes; True when a full batch went out."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_LOCK_AND_REPLAN, RELAY_LOCK_KEY):
                self.locked_out = True
                return False  # another round (this process's loop, or another) relays now
            changes = await _unpublished(conn, self.batch)
            if changes:
                try:
                    await self._publish(changes)
                except Exception:
                    # Not acknowledged (the broker unreachable, ...): the rows stay pending
                    # (the transaction rolls back). Count them anyway, or the gauge keeps the
                    # last good round's value (often 0) and the backlog alert stays quiet all
                    # through a broker outage. The publish error is raised, not the count's.
                    with contextlib.suppress(Exception):
                        self.metrics.outbox_backlog.set(await conn.fetchval(BACKLOG_QUERY) or 0)
                    raise
                sent_at = self.clock.now()
                backlog = await conn.fetchval(_MARK_PUBLISHED, [c["seq"] for c in changes])
            else:
                backlog = await conn.fetchval(BACKLOG_QUERY)
        # Counted once marked: a round whose mark fails publishes its changes again.
        if changes:
            self._count(changes, sent_at)
        self.metrics.outbox_backlog.set(backlog or 0)
        return len(changes) >= self.batch

    def _count(self, changes: list[asyncpg.Record], sent_at: datetime) -> None:
        for change in changes:
            occurred_at: datetime = change["occurred_at"]
            # asyncpg reads Postgres's -infinity and infinity as naive datetime.min / max
            # (rows written before ingest refused those two instants): no latency to tell.
            if occurred_at.tzinfo is not None:
                self.metrics.emit_latency.observe(max(0.0, (sent_at - occurred_at).total_seconds()))
        self.metrics.published.inc(len(changes))

    async def drain(self, rounds: int | None = None) -> bool:
        """Publish until the outbox is empty, in at most `rounds` rounds (None: no bound).

        False when the caller should wake the relay loop: another relay round (this
        process's loop, or another process) held the lock, and may have read the outbox
        before the caller's changes were committed; or the rounds ran out with changes left
        (a backlog of other writers' changes, which the consumer must not stop polling for:
        past max_poll_interval_ms the group would take its partitions away).
        """
        self.locked_out = False
        for _ in itertools.count() if rounds is None else range(rounds):
            if not await self.step():
                return not self.locked_out
        return False

    async def _publish(self, changes: list[asyncpg.Record]) -> None:
        # Grouped per partition in seq order and sent as whole batches, each partition's one
        # after the other (shared.kafka_batches): each customer keeps its partition, so its
        # changes arrive in decision order, also when a round fails part of the way.
        partitions = {self.topic: sorted(await self.producer.partitions_for(self.topic))}
        records = []
        for change in changes:
            trace = change["traceparent"]
            headers = cloudevent_headers(
                ce_id=change["id"], ce_source=CE_SOURCE, ce_type=TIER_CHANGED_TYPE,
                ce_time=change["emitted_at"],
                extra=[(CHANGE_SEQ_HEADER, str(change["seq"]).encode()),
                       *([("traceparent", trace.encode())] if trace else [])],
            )  # fmt: skip
            key = change["customer_id"].encode()
            records.append((self.topic, self._fitting(change, key, headers)))
        batches = build_batches(self.producer, self.partitioner.grouped(records, partitions))
        await send_in_order(self.producer, batches)
        if _debug.isEnabledFor(logging.DEBUG):
            for change in changes:
                log.debug(
                    "tier change published", tier_change_id=change["id"],
                    customer_id=change["customer_id"], dimension=change["dimension"],
                    to=change["to_class"],
                )  # fmt: skip

    def _fitting(self, change: asyncpg.Record, key: bytes, headers: Headers) -> Record:
        """The change's record, without its attributes (then its features too) when it would
        be over the broker's limit: a refused record would stop the relay, and every
        customer's changes behind it."""
        record = (key, wire_value(change), headers)
        size = size_over(record, self.max_message_bytes)
        if size is None:
            return record
        for dropped in (("attributes",), ("attributes", "features")):
            value = wire_value(change, attributes=False, features="features" not in dropped)
            if size_over((key, value, headers), self.max_message_bytes) is None:
                break
        headers.append((TRIMMED_HEADER, ",".join(dropped).encode()))
        log.warning(
            "tier change published without some of its fields: its record was too large",
            tier_change_id=change["id"], dropped=dropped, size=size, limit=self.max_message_bytes,
        )  # fmt: skip
        self.metrics.trimmed_changes.inc()
        return key, value, headers


# The relay's lock, and custom plans for the rest of its transaction. A prepared statement
# switches to a generic plan after five runs, and that plan keeps the table sizes it was
# made with until the next ANALYZE: made while the outbox was still small (a new database,
# the first minute before autovacuum), the read below scanned the whole change history and
# compared every row with every pending seq (140 ms a round at 25,000 changes, instead
# of 1.3 ms through the seq index). Planning each round costs about 0.2 ms.
_LOCK_AND_REPLAN = (
    "SELECT pg_try_advisory_xact_lock($1)"
    " AND set_config('plan_cache_mode', 'force_custom_plan', true) IS NOT NULL"
)
# Changes not yet published: the outbox backlog (the gauge, the bench and the tests).
BACKLOG_QUERY = "SELECT count(*) FROM scorer.tier_change_pending"
# Two narrow rows per change (services/scorer/migrations/versions/0004_outbox_pending.py),
# and the backlog left, in the same round trip (one a relay round fewer). The outer count
# sees the table as the statement began, the deleted rows still in it, so they are
# subtracted.
_MARK_PUBLISHED = (
    "WITH sent AS (DELETE FROM scorer.tier_change_pending WHERE seq = ANY($1::bigint[])"
    " RETURNING seq), marked AS (INSERT INTO scorer.tier_change_published (seq, published_at)"
    " SELECT seq, now() FROM sent ORDER BY seq)"  # pub_seq (0006) in seq order within a round
    f" SELECT ({BACKLOG_QUERY}) - (SELECT count(*) FROM sent)"
)


async def _unpublished(conn: Connection, limit: int) -> list[asyncpg.Record]:
    # The oldest pending seqs first (an InitPlan, run once), then their rows by the seq
    # index. As a plain join, the planner walked `tier_change` (the whole history) to
    # find a few pending rows: 11 ms a relay round at 5,000 events/s instead of under 1.
    return await conn.fetch(
        "SELECT seq, id, customer_id, dimension, from_class, to_class, cause, rule, features,"
        " attributes, rules_version, occurred_at, emitted_at, traceparent FROM scorer.tier_change"
        " WHERE seq = ANY(ARRAY(SELECT seq FROM scorer.tier_change_pending ORDER BY seq LIMIT $1))"
        " ORDER BY seq",
        limit,
    )


def wire_value(row: asyncpg.Record, *, attributes: bool = True, features: bool = True) -> bytes:
    """The `TierChanged` JSON of a `tier_change` row, written straight from the row
    (`attributes=False`, `features=False`: with none).

    The stored feature and attribute JSON is embedded as it is (no parse, no pydantic
    model per change): what `change_from_row(row).to_event().to_json()` says, faster.
    """
    return orjson.dumps(
        {
            "id": row["id"], "customer_id": row["customer_id"], "dimension": row["dimension"],
            "from": row["from_class"], "to": row["to_class"], "cause": row["cause"],
            "rule": row["rule"],
            "features": orjson.Fragment(row["features"] if features else b"{}"),
            "rules_version": row["rules_version"], "occurred_at": row["occurred_at"],
            "emitted_at": row["emitted_at"],
            "attributes": orjson.Fragment(row["attributes"] if attributes else b"{}"),
        },
        option=orjson.OPT_UTC_Z,
    )  # fmt: skip


def change_from_row(row: asyncpg.Record) -> ChangeRecord:
    """A `tier_change` row as a ChangeRecord (JSON columns arrive as text)."""
    occurred_at: datetime = row["occurred_at"]
    return ChangeRecord(
        id=row["id"],
        customer_id=row["customer_id"],
        dimension=Dimension(row["dimension"]),
        from_class=row["from_class"],
        to_class=row["to_class"],
        cause=ChangeCause(row["cause"]),
        rule=row["rule"],
        features=json.loads(row["features"]),
        attributes=json.loads(row["attributes"]),
        rules_version=row["rules_version"],
        occurred_at=occurred_at,
        emitted_at=row["emitted_at"],
    )
