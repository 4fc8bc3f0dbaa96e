"""A customer whose review time passed is caught up (cause `time`, each change at the moment
it happened) by whichever pass reaches it first: the consumer, a rules change or re-bucketing,
not only the time sweep, which holds the customers of lagging partitions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.scorer import store
from services.scorer.batch import apply_batch
from services.scorer.db import Pool, create_pool
from services.scorer.evaluation import Scoring, catch_up_all
from services.scorer.metrics import scorer_metrics
from services.scorer.rebucket import Rebucketer, ScoringHolder
from services.scorer.state_cache import StateCache
from services.scorer.sweeper import Sweeper
from shared.clock import FixedClock
from shared.domain.rules import default_rules_path, load_rules
from shared.domain.state import Event
from shared.kafka_batches import KeyPartitioner
from shared.metrics import new_registry
from shared.partition_scope import PartitionScope
from shared.topics import SCORER_GROUP
from tests.integration.scorer.support import NOW, RETRY, connect, login, purchase, wait_until

SCORING = Scoring(load_rules(default_rules_path()))
LATER = NOW + timedelta(days=100)
# The first instant past each threshold counted from the purchase at NOW.
DAY = NOW + timedelta(microseconds=1)
CAUGHT_UP = [
    ("activity_level", "active", "semi_active", "time", DAY + timedelta(days=7)),
    ("activity_level", "semi_active", "inactive", "time", DAY + timedelta(days=30)),
    ("lifecycle_stage", "established", "at_risk", "time", DAY + timedelta(days=90)),
]
BACK = [
    ("activity_level", "inactive", "active", "event", LATER),
    ("lifecycle_stage", "at_risk", "reactivated", "event", LATER),
]

Move = tuple[str, str | None, str, str, datetime]


async def _establish(pool: Pool, scoring: Scoring, cache: StateCache | None = None) -> None:
    """Customer `c` bought 10 days before NOW and at NOW: established, active."""
    events = [purchase("p0", "c", days_ago=10), purchase("p1", "c", days_ago=0)]
    await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=scoring, now=NOW,
                      cache=cache)  # fmt: skip


async def _moves(database_url: str, *, since: int = 0) -> list[Move]:
    """The customer's changes after the first `since`, in outbox order."""
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT dimension, from_class, to_class, cause, occurred_at FROM scorer.tier_change"
            " WHERE customer_id = 'c' ORDER BY seq OFFSET $1",
            since,
        )
    return [(r["dimension"], r["from_class"], r["to_class"], r["cause"], r["occurred_at"])
            for r in rows]  # fmt: skip


async def _emitted(database_url: str, cause: str) -> set[datetime]:
    async with connect(database_url) as conn:
        rows = await conn.fetch("SELECT emitted_at FROM scorer.tier_change WHERE cause = $1", cause)
    return {row["emitted_at"] for row in rows}


@pytest.mark.parametrize("cached", [False, True], ids=["read", "cached"])
async def test_the_consumer_emits_the_time_changes_due_before_an_event_it_reaches_first(
    scorer_db: str, cached: bool
) -> None:
    # The sweep never ran (its partition was held, say): the purchase on day 100 is read
    # first, an hour later. A sweep at the purchase's time would have emitted CAUGHT_UP.
    cache = StateCache(10) if cached else None
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await _establish(pool, SCORING, cache)
        read_at = LATER + timedelta(hours=1)
        await apply_batch(pool, [purchase("p2", "c", days_ago=-100)], [],
                          group_id=SCORER_GROUP, scoring=SCORING, now=read_at,
                          cache=cache)  # fmt: skip
    finally:
        await pool.close()
    assert await _moves(scorer_db, since=3) == CAUGHT_UP + BACK
    assert await _emitted(scorer_db, "time") == {read_at}


@contextlib.asynccontextmanager
async def _sweep_holding_the_customer(pool: Pool, scoring: Scoring) -> AsyncIterator[None]:
    """The time sweep at LATER, in a transaction that commits when the block ends."""
    async with pool.acquire() as sweep, sweep.transaction():
        due = await store.claim_due_customers(sweep, now=LATER, limit=10)
        outcome = catch_up_all(due, scoring, now=LATER)
        await store.save_customers(sweep, outcome.updates)
        await store.insert_changes(sweep, outcome.changes)
        yield


async def test_a_batch_that_waits_for_a_sweep_catches_nothing_up_twice(
    scorer_db: str,
) -> None:
    # The review time is read after the lock (or kept with a held record): read with the
    # locked rows, it would be the one from before the sweep, and the swept customer would
    # be caught up from day 7 again (`inactive` -> `semi_active` on day 7, and so on).
    cache = StateCache(10)  # a held record: the batch goes straight to the lock
    pool = await create_pool(scorer_db, size=3, application_name="test")
    try:
        await _establish(pool, SCORING, cache)
        async with _sweep_holding_the_customer(pool, SCORING):
            batch = apply_batch(pool, [purchase("p2", "c", days_ago=-100)], [],
                                group_id=SCORER_GROUP, scoring=SCORING,
                                now=LATER + timedelta(hours=1), cache=cache)  # fmt: skip
            consumer = asyncio.create_task(batch)
            await wait_until(lambda: _waiting(scorer_db, consumer))
        await consumer
    finally:
        await pool.close()
    # The sweep's changes, then the purchase's: none twice.
    assert await _moves(scorer_db, since=3) == CAUGHT_UP + BACK


GATE = 4242  # advisory lock key


@contextlib.asynccontextmanager
async def _partition_filter_gated(database_url: str) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """Statements that filter customers by partition (some partition held) wait, row by row
    before locking it, until the yielded function opens the gate."""
    async with connect(database_url) as conn:
        await conn.execute(
            "ALTER FUNCTION scorer.kafka_partition(text, integer) RENAME TO kafka_partition_real"
        )
        await conn.execute(f"""
            CREATE FUNCTION scorer.kafka_partition(key text, partitions integer)
            RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                PERFORM pg_advisory_lock_shared({GATE});
                PERFORM pg_advisory_unlock_shared({GATE});
                RETURN scorer.kafka_partition_real(key, partitions);
            END $$""")  # fmt: skip
        await conn.execute("SELECT pg_advisory_lock($1)", GATE)
        yield lambda: conn.execute("SELECT pg_advisory_unlock($1)", GATE)


async def test_a_sweep_whose_snapshot_predates_another_sweeps_commit_catches_nothing_up_twice(
    scorer_db: str,
) -> None:
    # Two processes' sweeps. B's statement takes its snapshot while A's transaction is open
    # and locks the customer after A committed: Postgres re-reads the locked customer row,
    # but returns the review row of B's snapshot (day 7). Caught up from there over classes
    # already moved on, B replayed A's changes backwards, then forwards.
    mine = KeyPartitioner().partition(b"c", [0, 1, 2])
    read = PartitionScope(3, frozenset({mine}), held=("other/9",))  # so the filter runs

    async def scope(_: Any) -> PartitionScope:
        return read

    sweep = Sweeper(pool := await create_pool(scorer_db, size=3, application_name="test"),
                    scoring=lambda: SCORING, clock=FixedClock(LATER + timedelta(minutes=1)),
                    batch=10, metrics=scorer_metrics(new_registry()), retry=RETRY,
                    scope=scope)  # fmt: skip
    try:
        await _establish(pool, SCORING)
        async with _partition_filter_gated(scorer_db) as open_gate:
            async with _sweep_holding_the_customer(pool, SCORING):  # A
                b = asyncio.create_task(sweep.step())
                await wait_until(lambda: _waiting(scorer_db, b, GATE_LOCK))
            await open_gate()  # A has committed
            await b
    finally:
        await pool.close()
    assert await _moves(scorer_db, since=3) == CAUGHT_UP


async def test_a_rebucket_walk_that_waits_for_a_sweep_catches_nothing_up_twice(
    scorer_db: str, tmp_path: Path
) -> None:
    # The walk reads and locks in one statement: after waiting for the sweep, Postgres
    # re-reads the customer row but not its review row. That review time is older than
    # the row's last evaluation, so the walk catches up from that evaluation instead.
    holder = ScoringHolder(load_rules(_population_rules(tmp_path)))
    read_at = LATER + timedelta(hours=1)
    pool = await create_pool(scorer_db, size=3, application_name="test")
    try:
        await _establish(pool, holder())
        async with _sweep_holding_the_customer(pool, holder()):
            rebucket = Rebucketer(pool, holder, clock=FixedClock(read_at),
                                  metrics=scorer_metrics(new_registry()))  # fmt: skip
            walk = asyncio.create_task(rebucket.step())
            await wait_until(lambda: _waiting(scorer_db, walk))
        await walk
    finally:
        await pool.close()
    assert await _moves(scorer_db, since=3) == [
        *CAUGHT_UP,
        ("value_tier", "bronze", "silver", "rebucket", read_at),
    ]


# What a statement waits for: a row lock (the sweep's), or the gate's advisory lock.
ROW_LOCK = "query LIKE '%FOR UPDATE%'"
GATE_LOCK = "wait_event = 'advisory'"


async def _waiting(database_url: str, task: asyncio.Task[Any], lock: str = ROW_LOCK) -> bool:
    """True once a statement of this database waits for `lock`; `task` must still run."""
    if task.done():
        task.result()
        raise AssertionError(f"the task did not wait ({lock})")
    async with connect(database_url) as conn:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            f" AND wait_event_type = 'Lock' AND {lock}"
        ))  # fmt: skip


async def test_a_rules_change_reaching_a_due_customer_first_catches_it_up_with_cause_time(
    scorer_db: str, tmp_path: Path
) -> None:
    # A new rules file that classifies alike: what is due since day 7 is time's doing.
    path = tmp_path / "rules.yaml"
    path.write_text(
        default_rules_path().read_text().replace("description: ", "description: revised ", 1)
    )
    new = Scoring(load_rules(path))
    assert new.rules.version != SCORING.rules.version
    at = NOW + timedelta(days=40)
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await _establish(pool, SCORING)
        sweeper = Sweeper(pool, scoring=lambda: new, clock=FixedClock(at), batch=10,
                          metrics=scorer_metrics(new_registry()), retry=RETRY)  # fmt: skip
        await sweeper.migrate_step()
    finally:
        await pool.close()
    assert await _moves(scorer_db, since=3) == CAUGHT_UP[:2]
    assert await _emitted(scorer_db, "time") == {at}
    async with connect(scorer_db) as conn:
        assert await conn.fetchval("SELECT rules_version FROM scorer.customer") == new.rules.version


async def test_rebucketing_a_due_customer_first_catches_it_up_with_cause_time(
    scorer_db: str, tmp_path: Path
) -> None:
    holder = ScoringHolder(load_rules(_population_rules(tmp_path)))
    at = NOW + timedelta(days=40)
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await _establish(pool, holder())
        await Rebucketer(pool, holder, clock=FixedClock(at),
                         metrics=scorer_metrics(new_registry())).step()  # fmt: skip
    finally:
        await pool.close()
    # Caught up with the bands it was scored with, then moved by the new cut points (its
    # spend is the whole population's top quintile): not a `time` change on day 7.
    assert await _moves(scorer_db, since=3) == [
        *CAUGHT_UP[:2],
        ("value_tier", "bronze", "gold", "rebucket", at),
    ]


def _population_rules(folder: Path) -> Path:
    path = folder / "population.yaml"
    path.write_text(
        default_rules_path().read_text().replace("mode: thresholds", "mode: population")
    )
    return path


@pytest.mark.parametrize("with_current", [False, True], ids=["late-only", "late-and-current"])
async def test_an_event_read_late_does_not_cancel_the_catch_up(
    scorer_db: str, with_current: bool
) -> None:
    # A login from 5 days before NOW reaches the consumer a hundred days later (out of order,
    # the sweep held): it stopped the catch-up, so the drops to semi_active and inactive were
    # never emitted and the rest was dated at the login, cause `event`, before the purchase
    # that established the customer. The sweep, had it come first, would have emitted
    # CAUGHT_UP; the consumer now does the same.
    pool = await create_pool(scorer_db, size=2, application_name="test")
    late = login("late", "c", days_ago=5)
    events: list[Event] = [late, purchase("p2", "c", days_ago=-100)] if with_current else [late]
    try:
        await _establish(pool, SCORING)
        await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=SCORING,
                          now=LATER + timedelta(hours=1))  # fmt: skip
    finally:
        await pool.close()
    # With the purchase: active again; still at_risk (the rules' first match: it has logged
    # in, not within 30 days), not reactivated.
    assert await _moves(scorer_db, since=3) == CAUGHT_UP + (BACK[:1] if with_current else [])
