"""A migration that waits longer than the services' 60 s statement timeout (here for a lock
a reader holds; on a large database, a table rewrite) finishes instead of being cancelled:
one statement cancelled rolled the whole upgrade back, and every retry failed the same way."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from shared.db import asyncpg_dsn
from shared.migrations import alembic_config, upgrade

# Past the services' command timeout (shared/db.py make_engine, 60 s).
HOLD_S = 65


@pytest.mark.faults
async def test_a_migration_waits_for_a_lock_past_the_statement_timeout(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url, "scorer", "0005")
    reader = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with reader.transaction():
            # 0006 alters this table: it waits for the reader's lock.
            await reader.execute("LOCK TABLE scorer.tier_change_published IN ACCESS SHARE MODE")
            migration = asyncio.create_task(asyncio.to_thread(upgrade, database_url, "scorer"))
            await asyncio.sleep(HOLD_S)
            assert not migration.done()  # still waiting, not failed
        await asyncio.wait_for(migration, 60)
        version = await reader.fetchval("SELECT version_num FROM scorer.alembic_version_scorer")
    finally:
        await reader.close()
    head = ScriptDirectory.from_config(alembic_config(database_url, "scorer")).get_current_head()
    assert version == head
