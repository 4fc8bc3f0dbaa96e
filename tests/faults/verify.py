"""Pass criteria of the fault suite, each a query or a comparison that can fail.

- scorer: every customer's stored state and classes equal a one-pass reference of the
  distinct events by the pure domain (`state.fold`, `compute_features`, `classify`);
- relay: the ids on the tier-changed topic equal the ids in `scorer.tier_change`;
- actions: every published change was consumed once, and no task, alert delivery,
  enrolment or sequence step exists twice for one tier change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer

from services.scorer.relay import BACKLOG_QUERY
from shared.contracts import TierChanged
from shared.db import asyncpg_dsn
from shared.domain.playbook_requests import AlertRequest
from shared.domain.playbooks import default_playbooks_path, load_playbooks, plan_actions
from shared.domain.state import Event
from shared.kafka import header
from tests.integration.scorer.support import reference

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float, what: str, every: float = 0.2
) -> T:
    """Poll `probe` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


@contextlib.asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(database_url: str, sql: str, *args: Any) -> int:
    async with connect(database_url) as conn:
        return int(await conn.fetchval(sql, *args) or 0)


async def rows(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with connect(database_url) as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def scorer_offsets(database_url: str) -> int:
    """Records the scorer has committed, over all partitions of the event topics."""
    return await scalar(database_url, "SELECT sum(next_offset) FROM scorer.consumer_offset")


async def scorer_caught_up(database_url: str, records: int) -> bool:
    """Every produced record committed and every tier change published."""
    return await scorer_offsets(database_url) >= records and not await scalar(
        database_url, BACKLOG_QUERY
    )


async def actions_offsets(database_url: str, topic: str) -> int:
    sql = "SELECT sum(next_offset) FROM actions.consumer_offset WHERE topic = $1"
    return await scalar(database_url, sql, topic)


async def state_mismatches(
    database_url: str, events: Iterable[Event], *, now: datetime
) -> list[str]:
    """Customers whose stored state or classes differ from the one-pass reference."""
    expected = reference(events, now=now)
    stored = {
        r["customer_id"]: {**r, "state": json.loads(r["state"])}
        for r in await rows(database_url, "SELECT * FROM scorer.customer WHERE state IS NOT NULL")
    }
    out = [f"{c}: missing" for c in expected.keys() - stored.keys()]
    out += [f"{c}: unexpected" for c in stored.keys() - expected.keys()]
    for customer_id in expected.keys() & stored.keys():
        want, got = expected[customer_id], stored[customer_id]
        out += [
            f"{customer_id}: {column}"
            for column in ("state", "value_tier", "activity_level", "lifecycle_stage")
            if got[column] != want[column]
        ]
    return out


async def read_topic(bootstrap: str, topic: str, *, at_least: int, within: float) -> list[Any]:
    """Every record of a topic: read until `at_least` arrived and nothing more comes."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + within
    try:
        quiet = 0
        while time.monotonic() < deadline and (len(records) < at_least or quiet < 2):
            batch = await consumer.getmany(timeout_ms=300)
            got = [r for rs in batch.values() for r in rs]
            records.extend(got)
            quiet = 0 if got else quiet + 1
    finally:
        await consumer.stop()
    return records


@dataclass(frozen=True)
class Published:
    """How the tier-changed topic compares with the outbox."""

    changes: int
    records: int
    missing: int
    unknown: int

    @property
    def republished(self) -> int:
        return self.records - (self.changes - self.missing)


async def compare_published(database_url: str, records: list[Any]) -> Published:
    """Outbox ids vs. topic ids (dedupe by `ce_id`: set equality)."""
    ids = {r["id"] for r in await rows(database_url, "SELECT id FROM scorer.tier_change")}
    on_topic = {header(r.headers, "ce_id") for r in records}
    return Published(len(ids), len(records), len(ids - on_topic), len(on_topic - ids))


DUPLICATE_QUERIES = {
    "task": "SELECT tier_change_id, playbook FROM actions.task GROUP BY 1, 2 HAVING count(*) > 1",
    "alert": "SELECT tier_change_id, playbook, audience FROM actions.delivery"
    " WHERE kind = 'alert' GROUP BY 1, 2, 3 HAVING count(*) > 1",
    "enrolment": "SELECT tier_change_id, sequence FROM actions.enrolment"
    " GROUP BY 1, 2 HAVING count(*) > 1",
    "step": "SELECT d.tier_change_id, e.sequence, d.step_index FROM actions.delivery d"
    " JOIN actions.enrolment e ON e.id = d.enrolment_id WHERE d.kind = 'step'"
    " GROUP BY 1, 2, 3 HAVING count(*) > 1",
}


async def actions_duplicates(database_url: str) -> dict[str, int]:
    """Per effect kind: how many tier changes have it more than once."""
    return {k: len(await rows(database_url, sql)) for k, sql in DUPLICATE_QUERIES.items()}


def changes_of(records: Iterable[Any]) -> dict[str, TierChanged]:
    """The distinct tier changes on the topic, by id."""
    out: dict[str, TierChanged] = {}
    for record in records:
        change = TierChanged.model_validate_json(record.value)
        out[change.id] = change
    return out


def expected_alerts(changes: Iterable[TierChanged]) -> Counter[tuple[str, str, str]]:
    """(tier change, playbook, audience) of every alert the default playbooks ask for."""
    books = load_playbooks(default_playbooks_path())
    return Counter(
        (change.id, request.playbook, request.audience)
        for change in changes
        for request in plan_actions(change, books).requests
        if isinstance(request, AlertRequest)
    )


async def stored_alerts(database_url: str) -> Counter[tuple[str, str, str]]:
    sql = "SELECT tier_change_id, playbook, audience FROM actions.delivery WHERE kind = 'alert'"
    found = await rows(database_url, sql)
    return Counter((r["tier_change_id"], r["playbook"], r["audience"]) for r in found)


async def consumed_changes(database_url: str) -> set[str]:
    """Tier-change ids in the actions inbox."""
    found = await rows(database_url, "SELECT message_id FROM actions.inbox")
    prefix = "tier-changed:"
    return {r["message_id"][len(prefix) :] for r in found if r["message_id"].startswith(prefix)}
