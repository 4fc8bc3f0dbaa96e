"""Review times live in `customer_review` (migration 0005): a customer write that changes no
class is a HOT update of the wide row, the sweeper still finds who is due, and the
migration carries review times over and back."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from alembic import command

from services.scorer import store
from services.scorer.evaluation import Scoring, fold_batch
from shared.domain.rules import default_rules_path, load_rules
from shared.domain.state import Event
from shared.migrations import alembic_config, upgrade
from tests.integration.scorer.support import NOW, connect, login, purchase

SCORING = Scoring(load_rules(default_rules_path()))
_WRITES = (
    "SELECT pg_stat_get_xact_tuples_updated('scorer.customer'::regclass),"
    " pg_stat_get_xact_tuples_hot_updated('scorer.customer'::regclass)"
)


async def _score(database_url: str, events: list[Event]) -> tuple[int, int]:
    """Fold `events` into their customers and save them; (updated, HOT-updated) rows."""
    async with connect(database_url) as conn, conn.transaction():
        ids = sorted({e.customer_id for e in events})
        records = await store.lock_customers(conn, ids, now=NOW)
        outcome = fold_batch(records, events, SCORING, now=NOW)
        await store.save_customers(conn, outcome.updates)
        row = await conn.fetchrow(_WRITES)
    assert row is not None
    return row[0], row[1]


async def _review_times(database_url: str) -> dict[str, datetime | None]:
    async with connect(database_url) as conn:
        rows = await conn.fetch("SELECT customer_id, next_review_at FROM scorer.customer_review")
    return {r["customer_id"]: r["next_review_at"] for r in rows}


async def test_a_write_that_changes_no_class_updates_the_customer_row_in_place(
    scorer_db: str,
) -> None:
    assert await _score(scorer_db, [purchase("e1", "c1", days_ago=2)]) == (1, 0)  # classified
    first = (await _review_times(scorer_db))["c1"]
    assert first is not None
    # A login a day later: no class moves, the review time does (activity is later now).
    assert await _score(scorer_db, [login("e2", "c1", days_ago=1)]) == (1, 1)
    assert (await _review_times(scorer_db))["c1"] == first + timedelta(days=1)
    # A second purchase makes the customer established: an indexed column changes.
    updated, hot = await _score(scorer_db, [purchase("e3", "c1", days_ago=0.5)])
    assert (updated, hot) == (1, 0)


async def test_the_sweeper_claims_customers_by_their_review_time(scorer_db: str) -> None:
    await _score(scorer_db, [purchase("e1", "soon", days_ago=6.5), purchase("e2", "later", 1)])
    reviews = await _review_times(scorer_db)
    soon, later = reviews["soon"], reviews["later"]
    assert soon is not None and later is not None and soon < later
    async with connect(scorer_db) as conn, conn.transaction():
        due = await store.claim_due_customers(conn, now=NOW + timedelta(days=1), limit=10)
    assert [(r.customer_id, at) for r, at in due] == [("soon", soon)]


async def test_migration_0005_moves_review_times_to_their_table_and_back(
    database_url: str,
) -> None:
    await asyncio.to_thread(upgrade, database_url, "scorer", "0004")
    async with connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO scorer.customer (customer_id, next_review_at)"
            " VALUES ('a', $1), ('b', NULL)",
            NOW,
        )
    await asyncio.to_thread(upgrade, database_url, "scorer")
    assert await _review_times(database_url) == {"a": NOW, "b": None}
    async with connect(database_url) as conn:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = 'scorer.customer'::regclass"
        )
    assert options == ["fillfactor=70"]
    await asyncio.to_thread(command.downgrade, alembic_config(database_url, "scorer"), "0004")
    async with connect(database_url) as conn:
        rows = await conn.fetch("SELECT customer_id, next_review_at FROM scorer.customer")
    assert {r["customer_id"]: r["next_review_at"] for r in rows} == {"a": NOW, "b": None}
