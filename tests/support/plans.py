"""The plan Postgres may keep for a prepared statement: made once, on a small table.

After five runs a prepared statement may switch to a generic plan, which keeps the table
sizes it was made with until the table is next analyzed (autovacuum's first ANALYZE of a
new database comes after a minute or more). `stale_generic_plan` reproduces that: plan on
a small table, grow it, and return what the same plan does with the grown table.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.db import asyncpg_dsn


async def stale_generic_plan(
    database_url: str, query: str, *, fill: str, small: int, large: int, ids: Sequence[str]
) -> str:
    """EXPLAIN of `query($1 = ids)` with the generic plan made while `fill` had added
    rows 1..`small`; `fill` ($1, $2: the first and last row number) then adds up to `large`."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(fill, 1, small)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE wanted(text[]) AS {query}")
        await conn.execute("EXECUTE wanted('{x}')")
        await conn.execute(fill, small + 1, large)
        literal = ",".join(ids)  # EXECUTE takes no subquery, and EXPLAIN no parameters
        rows = await conn.fetch(f"EXPLAIN EXECUTE wanted('{{{literal}}}')")
        return "\n".join(row[0] for row in rows)
    finally:
        await conn.close()


def whole_table_per_id(plan: str, table: str) -> list[str]:
    """What in `plan` compares each row of `table` with each id: an `= ANY ($1)` filter, or
    a nested loop that scans the table (empty when the plan is linear in the table)."""
    lines = plan.splitlines()
    found = [line.strip() for line in lines if "Filter:" in line and "ANY" in line]
    if any("Nested Loop" in line for line in lines):
        found += [line.strip() for line in lines if f"Seq Scan on {table}" in line]
    return found
