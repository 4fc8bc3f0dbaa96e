"""`tierstream run` with your DATABASE_URL and the embedded broker: the broker starts empty,
so offsets an earlier run stored are another log's. A second run skipped the first records
of the new log and lost the demo's events; now it refuses, or forgets them when asked."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cli.run import _bootstrap
from shared.db import asyncpg_dsn


async def _offsets(database_url: str) -> list[int]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [
            await conn.fetchval(f"SELECT count(*) FROM {schema}.consumer_offset")
            for schema in ("scorer", "actions")
        ]
    finally:
        await conn.close()


async def test_offsets_of_an_earlier_broker_refuse_a_fresh_one_unless_forgotten(
    database_url: str, kafka_bootstrap: str, topic_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TIERSTREAM_TOPIC_NAMESPACE", topic_namespace)
    env = {"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    # A first run: nothing stored yet.
    assert await asyncio.to_thread(_bootstrap, env, fresh_broker=True) is None
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:  # what its consumers stored
        await conn.execute(
            "INSERT INTO scorer.consumer_offset (group_id, topic, partition, next_offset)"
            f" VALUES ('g', '{topic_namespace}.events.purchases', 0, 5000),"
            f" ('g', '{topic_namespace}.events.logins', 1, 70)"
        )
    finally:
        await conn.close()
    refused = await asyncio.to_thread(_bootstrap, env, fresh_broker=True)
    assert refused is not None and refused.startswith("cannot start: the database at"), refused
    assert "holds 2 consumer offsets of an earlier broker" in refused
    assert "--forget-offsets" in refused and "KAFKA_BOOTSTRAP_SERVERS" in refused
    assert await _offsets(database_url) == [2, 0]
    # The broker those offsets are from (not the embedded one): they are its log's.
    assert await asyncio.to_thread(_bootstrap, env, fresh_broker=False) is None
    assert await _offsets(database_url) == [2, 0]
    forgotten = await asyncio.to_thread(_bootstrap, env, fresh_broker=True, forget_offsets=True)
    assert forgotten is None
    assert await _offsets(database_url) == [0, 0]
