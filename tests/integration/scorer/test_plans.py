"""The scorer's customer look-ups stay linear in the table when Postgres keeps a generic
plan made while the table was small (services/scorer/store.py, docs/PERFORMANCE.md)."""

from __future__ import annotations

import pytest

from services.scorer import store
from tests.support.plans import stale_generic_plan, whole_table_per_id

_ADD_CUSTOMERS = (
    "INSERT INTO scorer.customer (customer_id, created_at, updated_at)"
    " SELECT 'c' || g, now(), now() FROM generate_series($1::int, $2::int) AS g"
)


@pytest.mark.parametrize("query", [store.LOCK_CUSTOMERS, store.READ_CUSTOMERS])
async def test_a_plan_made_on_a_small_table_compares_no_row_with_every_wanted_id(
    scorer_db: str, query: str
) -> None:
    ids = [f"c{i}" for i in range(1, 5001, 5)]
    plan = await stale_generic_plan(
        scorer_db, query, fill=_ADD_CUSTOMERS, small=3, large=5000, ids=ids
    )
    # `Filter: (customer_id = ANY ($1))` compares each row with each id: 1,000 ids over
    # 25,000 customers took 450 ms that way, 6 ms as a join. Postgres 15 makes that plan
    # here for `WHERE customer_id = ANY($1)`; Postgres 18 happened to pick the primary key.
    assert whole_table_per_id(plan, "customer") == [], plan
