"""What the scorer's and actions' failed-dead-letter tests share: sending keyed records
with their offsets, the offset a consumer stored in Postgres, stepping a consumer until it
fails or applies, and what the dead-letter topic must then hold."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.db import asyncpg_dsn
from shared.kafka import Headers, header
from tests.integration.scorer.support import wait_until

Step = Callable[[], Awaitable[object]]


async def send_acked(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, Headers]]
) -> list[int]:
    """Publish (key, value, headers) records in order, acknowledged; returns their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        return [
            (await producer.send_and_wait(topic, value=v, key=k, headers=h)).offset
            for k, v, h in records
        ]
    finally:
        await producer.stop()


async def stored_offset(database_url: str, schema: str, group: str, topic: str) -> int | None:
    """The next offset stored for the topic (its records all went to one partition)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        value: int | None = await conn.fetchval(
            f"SELECT max(next_offset) FROM {schema}.consumer_offset WHERE group_id = $1"
            " AND topic = $2",
            group, topic,
        )  # fmt: skip
    finally:
        await conn.close()
    return value


async def step_until_failed(step: Step, stored: Callable[[], Awaitable[int | None]]) -> str:
    """Step a consumer until a batch fails on the broker or (what must not happen) an offset
    is stored; says which."""

    async def tried() -> str | None:
        try:
            await step()
        except KafkaError as exc:
            return f"failed: {exc!r}"
        moved = await stored()
        return f"moved to {moved}" if moved is not None else None

    return await wait_until(tried, within=60)


async def step_until_past(
    step: Step, stored: Callable[[], Awaitable[int | None]], last_offset: int
) -> None:
    """Step a consumer until its stored offset is past `last_offset`."""

    async def applied() -> bool:
        try:
            await step()
        except KafkaError:
            return False  # the producer was not reconnected yet: the next step retries
        return (await stored() or 0) > last_offset

    await wait_until(applied, within=60)


def assert_only_the_poison(
    dead: Sequence[Any], poison: bytes, *, topic: str, offset: int, group: str
) -> None:
    """The dead-letter topic holds the poison record (at least once: a retried batch writes
    it again) and nothing else, with where it came from."""
    assert dead, "the poison record never reached the dead-letter topic"
    assert all(r.value == poison for r in dead)
    assert {
        (header(r.headers, "dlq_original_topic"), header(r.headers, "dlq_original_offset"))
        for r in dead
    } == {(topic, str(offset))}
    assert all(header(r.headers, "dlq_consumer_group") == group for r in dead)
