"""The consumer's in-memory states change nothing that is stored, whoever else writes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from services.scorer.batch import apply_batch
from services.scorer.db import create_pool
from services.scorer.evaluation import Scoring
from services.scorer.settings import ScorerSettings
from services.scorer.state_cache import StateCache
from shared.domain.rules import load_rules
from shared.domain.state import Event
from shared.migrations import upgrade
from shared.offsets import Fenced, OffsetMove
from shared.topics import SCORER_GROUP
from tests.integration.scorer.support import NOW, connect, customer_rows, login, purchase, support
from tests.support.infra import fresh_database

SCORING = Scoring(load_rules(ScorerSettings().rules_file))
# (days after NOW the batch runs, its events, whether "another process" applies it);
# events happen a little before their batch (days_ago counts back from NOW).
ROUNDS: list[tuple[float, list[Event], bool]] = [
    (0, [purchase("p1", "a", 3), purchase("p2", "b", 200, "900"), login("l1", "a", 1)], False),
    (1, [login("l2", "a", -1), purchase("p3", "c", -1, "5000")], False),
    (2, [purchase("p4", "b", -2, "40")], True),  # another writer: the cache's b is stale now
    (40, [login("l3", "b", -40), support("s1", "a", -40, nps=9)], False),
    (41, [purchase("p5", "a", -41), purchase("p6", "b", -41, "3000")], False),
    (400, [login("l4", "a", -400), login("l5", "c", -400)], False),  # windows have emptied
    (400, [login("l4", "a", -400), login("l6", "b", -400)], False),  # l4 again: a redelivery
]


async def _run(database_url: str, cache: StateCache | None) -> None:
    pool = await create_pool(database_url, size=2, application_name="test")
    try:
        for days, events, elsewhere in ROUNDS:
            await apply_batch(
                pool, events, [], group_id=SCORER_GROUP, scoring=SCORING,
                now=NOW + timedelta(days=days), cache=None if elsewhere else cache,
            )  # fmt: skip
    finally:
        await pool.close()


async def _stored(database_url: str) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]]]:
    customers = await customer_rows(database_url)
    async with connect(database_url) as conn:
        changes = await conn.fetch(
            "SELECT customer_id, dimension, from_class, to_class, rule, features::text,"
            " occurred_at, emitted_at FROM scorer.tier_change ORDER BY seq"
        )
    return customers, [tuple(c) for c in changes]


async def test_cached_states_store_exactly_what_reading_them_back_stores(
    scorer_db: str, pg_server_url: str
) -> None:
    cache = StateCache(100)
    await _run(scorer_db, cache)
    async with fresh_database(pg_server_url) as plain_db:
        await asyncio.to_thread(upgrade, plain_db, "scorer")
        await _run(plain_db, None)
        plain = await _stored(plain_db)
    cached = await _stored(scorer_db)
    assert cached == plain
    assert {c: row["version"] for c, row in cached[0].items()} == {"a": 5, "b": 5, "c": 2}
    counts = cache.counts
    # Stored customers locked with the cache: a 4 times, b 3 times, c once; b was held
    # once at a version the other writer had moved past (new customers are not counted).
    assert (counts.hits, counts.stale, counts.misses) == (7, 1, 0)


async def test_a_rolled_back_batch_leaves_no_half_applied_state_behind(scorer_db: str) -> None:
    cache = StateCache(100)
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:

        async def apply(event_id: str, expected: int | None, next_offset: int) -> None:
            await apply_batch(
                pool, [purchase(event_id, "c1", days_ago=1)],
                [OffsetMove("t", 0, expected, next_offset)], group_id=SCORER_GROUP,
                scoring=SCORING, now=NOW, cache=cache,
            )  # fmt: skip

        await apply("e1", None, 10)
        assert len(cache) == 1
        with pytest.raises(Fenced):
            await apply("zombie", None, 5)  # folded into the held state, then rolled back
        assert len(cache) == 0
        await apply("e2", 10, 20)
    finally:
        await pool.close()
    assert (await customer_rows(scorer_db))["c1"]["state"]["lifetime_orders"] == 2
    assert cache.counts.misses == 1  # after the rollback c1 was read from Postgres again


async def test_a_held_customer_whose_row_was_deleted_fails_loudly_once_then_starts_afresh(
    scorer_db: str,
) -> None:
    """A held customer gets no placeholder insert; should its row be deleted by hand, the
    batch fails with a clear error instead of losing the customer, and the retry (the
    record is no longer held) creates the row again."""
    cache = StateCache(100)
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:

        async def apply(event_id: str) -> None:
            await apply_batch(
                pool, [purchase(event_id, "c1", days_ago=1)], [], group_id=SCORER_GROUP,
                scoring=SCORING, now=NOW, cache=cache,
            )  # fmt: skip

        await apply("e1")
        async with connect(scorer_db) as conn:
            await conn.execute("DELETE FROM scorer.customer WHERE customer_id = 'c1'")
        with pytest.raises(RuntimeError, match="1 customer rows disappeared"):
            await apply("e2")
        await apply("e2")
    finally:
        await pool.close()
    row = (await customer_rows(scorer_db))["c1"]
    assert row["state"]["lifetime_orders"] == 1  # only e2: the deleted row took e1 with it
