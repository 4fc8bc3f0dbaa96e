"""Population mode: quintile cut points are stored, versioned, and moved customers re-bucketed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.scorer import rebucket as rebucket_module
from services.scorer import store
from services.scorer.batch import apply_batch
from services.scorer.db import create_pool
from services.scorer.metrics import scorer_metrics
from services.scorer.rebucket import Rebucketer, ScoringHolder
from shared.clock import FixedClock
from shared.domain.rules import default_rules_path, load_rules
from shared.kafka_batches import KeyPartitioner
from shared.metrics import new_registry
from shared.partition_scope import EVERYTHING, PartitionScope
from shared.topics import SCORER_GROUP
from tests.integration.scorer.support import NOW, connect, customer_rows, purchase


async def test_recomputed_cut_points_rebucket_customers_with_cause_rebucket(
    scorer_db: str, tmp_path: Path
) -> None:
    path = _population_rules(tmp_path)
    holder = ScoringHolder(load_rules(path))
    assert holder.population_mode
    events = [purchase(f"p{i}", f"c{i}", days_ago=5, amount=str(10 * (i + 1))) for i in range(10)]
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        # Before any cut points exist the bands apply: small spenders are all bronze.
        await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=holder(), now=NOW)
        assert {r["value_tier"] for r in (await customer_rows(scorer_db)).values()} == {"bronze"}
        rebucket = Rebucketer(
            pool, holder, clock=FixedClock(NOW), metrics=scorer_metrics(new_registry())
        )
        await rebucket.step()
        cut_points = holder().cut_points
        version = cut_points.version if cut_points else None
        await rebucket.step()  # same population: same version, nothing re-bucketed twice
    finally:
        await pool.close()
    async with connect(scorer_db) as conn:
        stored = await conn.fetch("SELECT version FROM scorer.cut_points")
        changes = await conn.fetch("SELECT * FROM scorer.tier_change WHERE cause = 'rebucket'")
    assert [r["version"] for r in stored] == [version]
    rows = await customer_rows(scorer_db)
    gold = {c for c, r in rows.items() if r["value_tier"] == "gold"}
    assert gold == {"c6", "c7", "c8", "c9"}  # the top two quintiles of spend (M >= 4)
    tiers = [r for r in changes if r["dimension"] == "value_tier"]
    moves = {(r["customer_id"], r["from_class"], r["to_class"]) for r in tiers}
    # Everyone bought once in the window: F is the top quintile for all, so the rest is silver.
    assert moves == {(c, "bronze", "gold" if c in gold else "silver") for c in rows}
    assert {r["cut_points_version"] for r in rows.values()} == {version}


async def test_another_process_adopts_stored_cut_points_within_one_poll(
    scorer_db: str, tmp_path: Path
) -> None:
    path = _population_rules(tmp_path)
    events = [purchase(f"p{i}", f"c{i}", days_ago=5, amount=str(10 * (i + 1))) for i in range(10)]
    computing, other = ScoringHolder(load_rules(path)), ScoringHolder(load_rules(path))
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=computing(), now=NOW)
        metrics = scorer_metrics(new_registry())
        await Rebucketer(pool, computing, clock=FixedClock(NOW), metrics=metrics).step()
        follower = Rebucketer(pool, other, clock=FixedClock(NOW), metrics=metrics)
        assert other().cut_points is None
        assert await follower.adopt_step() is False  # a poll, not a recompute
        assert other().cut_points == computing().cut_points is not None
        async with connect(scorer_db) as conn:
            assert await conn.fetchval("SELECT count(*) FROM scorer.cut_points") == 1
    finally:
        await pool.close()


async def test_each_page_of_a_rebucket_is_evaluated_at_the_time_it_is_locked(
    scorer_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A walk over every customer takes minutes; evaluating late pages at the walk's start
    # would undo the time-driven moves the consumer and sweeper made meanwhile.
    path = _population_rules(tmp_path)
    holder = ScoringHolder(load_rules(path))
    clock = FixedClock(NOW)
    pages = 0
    lock_page = store.lock_rebucket_page

    async def slow_walk(conn: Any, **page: Any) -> Any:
        nonlocal pages
        pages += 1
        if pages == 2:
            clock.advance(timedelta(days=10))  # the first page took its time
        return await lock_page(conn, **page)

    monkeypatch.setattr(rebucket_module, "PAGE", 1)
    monkeypatch.setattr(store, "lock_rebucket_page", slow_walk)
    events = [purchase(f"p{i}", f"c{i}", days_ago=5) for i in range(2)]
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=holder(), now=NOW)
        rebucket = Rebucketer(pool, holder, clock=clock, metrics=scorer_metrics(new_registry()))
        await rebucket.step()
    finally:
        await pool.close()
    rows = await customer_rows(scorer_db)
    assert rows["c0"]["activity_level"] == "active"  # 5 days without an event at NOW
    assert rows["c1"]["activity_level"] == "semi_active"  # 15 days at NOW + 10 days


async def test_rebucketing_waits_for_unread_partitions_and_leaves_their_customers_out(
    scorer_db: str, tmp_path: Path
) -> None:
    # Population cut points from stale features, and customers re-bucketed at `now` without
    # their unread events, would both be wrong; the consumer re-evaluates those customers
    # with the current cut points once it reads their events.
    holder = ScoringHolder(load_rules(_population_rules(tmp_path)))
    # A partition falls behind during the walk.
    async with _ten_buyers_and_held_partition(scorer_db, holder, "held, read, held") as (
        rebucket, held,
    ):  # fmt: skip
        await rebucket.step()
        async with connect(scorer_db) as conn:
            assert await conn.fetch("SELECT version FROM scorer.cut_points") == []
        await rebucket.step()
    rows = await customer_rows(scorer_db)
    cut_points = holder().cut_points
    assert cut_points is not None
    assert {c for c, r in rows.items() if r["cut_points_version"] == cut_points.version} == (
        set(rows) - held
    )
    assert {r["value_tier"] for c, r in rows.items() if c in held} == {"bronze"}


async def test_customers_a_walk_left_out_are_rebucketed_by_the_next_with_the_same_cut_points(
    scorer_db: str, tmp_path: Path
) -> None:
    # Every partition read when the step starts, one falls behind during the walk: its
    # customers are left out. The next step computes the same cut points version, and must
    # still walk the customers not scored with it.
    holder = ScoringHolder(load_rules(_population_rules(tmp_path)))
    async with _ten_buyers_and_held_partition(scorer_db, holder, "read, held, read") as (
        rebucket, held,
    ):  # fmt: skip
        await rebucket.step()
        cut_points = holder().cut_points
        assert cut_points is not None
        left_out = {c for c, r in (await customer_rows(scorer_db)).items()
                    if r["cut_points_version"] != cut_points.version}  # fmt: skip
        assert left_out == held
        await rebucket.step()
        await rebucket.step()  # nothing left: no customer is re-bucketed twice
    assert holder().cut_points == cut_points
    rows = await customer_rows(scorer_db)
    assert {r["cut_points_version"] for r in rows.values()} == {cut_points.version}
    async with connect(scorer_db) as conn:
        changes = await conn.fetch(
            "SELECT customer_id FROM scorer.tier_change"
            " WHERE cause = 'rebucket' AND dimension = 'value_tier'"
        )
    # Each customer moved once (the bands made them all bronze), the held ones a step later.
    assert sorted(r["customer_id"] for r in changes) == sorted(rows)


@asynccontextmanager
async def _ten_buyers_and_held_partition(
    scorer_db: str, holder: ScoringHolder, scopes: str
) -> AsyncIterator[tuple[Rebucketer, set[str]]]:
    """Ten customers with one purchase each, and a Rebucketer whose successive scope reads
    say `scopes` ("read": every partition read; "held": partition 1 of 3 unread; the last
    one repeats); with the customers of partition 1."""
    events = [purchase(f"p{i}", f"c{i}", days_ago=5, amount=str(10 * (i + 1))) for i in range(10)]
    held_p = 1
    held = {f"c{i}" for i in range(10) if _partition(f"c{i}") == held_p}
    assert held and len(held) < 10
    some_held = PartitionScope(3, frozenset({0, 1, 2} - {held_p}), (f"logins/{held_p}",))
    reads = [some_held if word == "held" else EVERYTHING for word in scopes.split(", ")]

    async def scope(conn: object) -> PartitionScope:
        return reads.pop(0) if len(reads) > 1 else reads[0]

    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=holder(), now=NOW)
        yield Rebucketer(pool, holder, clock=FixedClock(NOW),
                         metrics=scorer_metrics(new_registry()), scope=scope), held  # fmt: skip
    finally:
        await pool.close()


def _partition(customer_id: str) -> int:
    return KeyPartitioner().partition(customer_id.encode(), range(3))


def _population_rules(folder: Path) -> Path:
    """The default rules in population mode (quintile cut points), as a file in `folder`."""
    path = folder / "population.yaml"
    path.write_text(
        default_rules_path().read_text().replace("mode: thresholds", "mode: population")
    )
    return path
