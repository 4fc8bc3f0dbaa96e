"""The scorer's customer look-ups stay linear in the table when Postgres keeps a generic
plan made while the table was small (services/scorer/store.py, docs/PERFORMANCE.md)."""

from __future__ import annotations

import pytest

from services.scorer import store
from tests.integration.scorer.support import connect

_ADD_CUSTOMERS = (
    "INSERT INTO scorer.customer (customer_id, created_at, updated_at)"
    " SELECT 'c' || g, now(), now() FROM generate_series($1::int, $2::int) AS g"
)


@pytest.mark.parametrize("query", [store.LOCK_CUSTOMERS, store.READ_CUSTOMERS])
async def test_a_plan_made_on_a_small_table_compares_no_row_with_every_wanted_id(
    scorer_db: str, query: str
) -> None:
    async with connect(scorer_db) as conn:
        await conn.execute(_ADD_CUSTOMERS, 1, 3)
        # What a prepared statement may do on its own after five runs (until the next
        # ANALYZE): plan once for any ids, with the table as it is now.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE wanted(text[]) AS {query}")
        await conn.execute("EXECUTE wanted('{c1,c2}')")
        await conn.execute(_ADD_CUSTOMERS, 4, 5000)
        ids = ",".join(f"c{i}" for i in range(1, 5001, 5))  # EXECUTE takes no subquery
        plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE wanted('{{{ids}}}')"))
    # `Filter: (customer_id = ANY ($1))` compares each row with each id: 1,000 ids over
    # 25,000 customers took 450 ms that way, 6 ms as a join. Postgres 15 makes that plan
    # here for `WHERE customer_id = ANY($1)`; Postgres 18 happened to pick the primary key.
    filters = [line for line in plan.splitlines() if "Filter:" in line and "ANY" in line]
    assert filters == [], plan
    assert "unnest" in plan, plan
    # Nor a nested loop that scans the whole table once per id.
    assert not ("Nested Loop" in plan and "Seq Scan on customer" in plan), plan
