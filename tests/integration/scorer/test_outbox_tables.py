"""The outbox: a change is pending from its insert until the relay publishes it, in seq
order; the history shows when each went out; migration 0004 carries older rows over."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from alembic import command

from services.scorer.batch import apply_batch
from services.scorer.db import Pool
from services.scorer.evaluation import Scoring
from services.scorer.main import gauge_step
from services.scorer.metrics import scorer_metrics
from services.scorer.queries import StoredChange, list_all_changes, list_changes
from services.scorer.relay import RELAY_LOCK_KEY, TRIMMED_HEADER
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.contracts import TierChanged
from shared.domain.rules import load_rules
from shared.kafka import CHANGE_SEQ_HEADER, header
from shared.metrics import new_registry
from shared.migrations import alembic_config, upgrade
from shared.topics import SCORER_GROUP
from tests.integration.scorer.support import (
    NOW,
    connect,
    purchase,
    read_topic,
    relaying,
    seqs,
)

SCORING = Scoring(load_rules(ScorerSettings().rules_file))
BACKLOG_GAUGE = "tierstream_scorer_outbox_backlog_changes"
OLDEST_GAUGE = "tierstream_scorer_outbox_oldest_age_seconds"
MINUTE = timedelta(minutes=1)


async def test_changes_stay_pending_until_the_relay_publishes_them_in_seq_order(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    registry = new_registry()
    async with relaying(base_env, scorer_db, topic_namespace, registry=registry,
                        batch=4) as (pool, relay, topic):  # fmt: skip
        await apply_batch(
            pool, [purchase("p1", "a", 3), purchase("p2", "b", 3, "5000")], [],
            group_id=SCORER_GROUP, scoring=Scoring(load_rules(ScorerSettings().rules_file)),
            now=NOW,
        )  # fmt: skip
        changed = await seqs(scorer_db, "tier_change")
        assert len(changed) == 6  # three dimensions for each of the two new customers
        assert await seqs(scorer_db, "tier_change_pending") == changed  # the COPY's trigger
        assert await relay.step() is True  # a full batch: the four oldest
        assert registry.get_sample_value(BACKLOG_GAUGE) == 2  # the two still pending
        assert await seqs(scorer_db, "tier_change_published") == changed[:4]
        assert await seqs(scorer_db, "tier_change_pending") == changed[4:]
        feed = await list_all_changes(pool, since=None, dimension=None, after_seq=None, limit=10)
        assert [c.change.id for c in feed] == [c.change.id for c in await _by_seq(pool)][:4]
        assert all(c.published_at is not None for c in feed)  # the feed lists what went out
        assert await relay.step() is False  # the rest, and the outbox is empty
        assert registry.get_sample_value(BACKLOG_GAUGE) == 0
        assert await seqs(scorer_db, "tier_change_pending") == []
        assert await seqs(scorer_db, "tier_change_published") == changed
        assert len(await read_topic(kafka_bootstrap, topic, expect=6)) == 6


async def test_the_oldest_unpublished_change_has_an_age_gauge(
    base_env: dict[str, str], scorer_db: str, topic_namespace: str
) -> None:
    # The backlog alert needs over 1,000 pending changes: a relay stuck on a few (a quiet
    # deployment) went unseen while actions and subscribers waited for them.
    registry = new_registry()
    async with relaying(base_env, scorer_db, topic_namespace, batch=10) as (pool, relay, _):
        refresh = gauge_step(pool, scorer_metrics(registry), FixedClock(NOW + 12 * MINUTE))
        await refresh()
        assert registry.get_sample_value(OLDEST_GAUGE) == 0  # nothing pending
        await apply_batch(pool, [purchase("p1", "a", 3)], [], group_id=SCORER_GROUP,
                          scoring=SCORING, now=NOW)  # fmt: skip
        await refresh()
        assert registry.get_sample_value(OLDEST_GAUGE) == 12 * 60  # decided at NOW
        await relay.step()
        await refresh()
        assert registry.get_sample_value(OLDEST_GAUGE) == 0


async def test_the_relay_read_is_planned_afresh_every_round(
    base_env: dict[str, str], scorer_db: str, topic_namespace: str
) -> None:
    # A generic plan (chosen after five runs of a prepared statement) keeps the table sizes
    # it was made with until the next ANALYZE: made on a small outbox, the read scanned the
    # whole history every round once it had grown (services/scorer/relay.py).
    # One session: its prepared statements are the relay's.
    async with relaying(base_env, scorer_db, topic_namespace, pool_size=1) as (pool, relay, _):
        scoring = Scoring(load_rules(ScorerSettings().rules_file))
        for round_ in range(8):
            await apply_batch(
                pool, [purchase(f"p{round_}", f"c{round_}", 3)], [], group_id=SCORER_GROUP,
                scoring=scoring, now=NOW,
            )  # fmt: skip
            await relay.step()
        async with pool.acquire() as conn:
            plans = await conn.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE $1",
                "%FROM scorer.tier_change_pending ORDER BY seq LIMIT%",
            )  # the pattern as a parameter: this query's own text must not match it
        assert [(p["generic_plans"], p["custom_plans"]) for p in plans] == [(0, 8)]
        assert await seqs(scorer_db, "tier_change_pending") == []


async def test_migration_0004_moves_published_times_and_pending_changes_and_back(
    database_url: str,
) -> None:
    await asyncio.to_thread(upgrade, database_url, "scorer", "0003")
    columns = (
        "id, customer_id, dimension, to_class, cause, rule, features, rules_version,"
        " occurred_at, emitted_at, published_at"
    )
    async with connect(database_url) as conn:
        for change_id, published_at in (("sent", NOW), ("waiting", None)):
            await conn.execute(
                f"INSERT INTO scorer.tier_change ({columns})"
                " VALUES ($1, 'a', 'value_tier', 'gold', 'event', 'r', '{}', 'v', $2, $2, $3)",
                change_id, NOW, published_at,
            )  # fmt: skip
    await asyncio.to_thread(upgrade, database_url, "scorer")
    async with connect(database_url) as conn:
        seq_of = {
            r["id"]: r["seq"] for r in await conn.fetch("SELECT id, seq FROM scorer.tier_change")
        }
        published = await conn.fetch("SELECT seq, published_at FROM scorer.tier_change_published")
        assert [(r["seq"], r["published_at"]) for r in published] == [(seq_of["sent"], NOW)]
        assert await seqs(database_url, "tier_change_pending") == [seq_of["waiting"]]
    config = alembic_config(database_url, "scorer")
    await asyncio.to_thread(command.downgrade, config, "0003")
    async with connect(database_url) as conn:
        rows = await conn.fetch("SELECT id, published_at FROM scorer.tier_change ORDER BY id")
    assert [(r["id"], r["published_at"]) for r in rows] == [("sent", NOW), ("waiting", None)]


async def test_a_change_too_large_for_the_broker_goes_out_without_its_attributes(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    # A refused record would stop the relay, and every customer's changes queued behind it.
    registry = new_registry()
    async with relaying(base_env, scorer_db, topic_namespace, registry=registry,
                         max_message_bytes=4096) as (pool, relay, topic):  # fmt: skip
        notes = purchase("p-big", "big", 3).model_copy(update={"attributes": {"notes": "n" * 6000}})
        small = purchase("p-small", "small", 3).model_copy(update={"attributes": {"tier": "a"}})
        await apply_batch(pool, [notes, small], [], group_id=SCORER_GROUP, scoring=SCORING,
                          now=NOW)  # fmt: skip
        await relay.drain()
        records = await read_topic(kafka_bootstrap, topic, expect=6)
        by_customer: dict[str, list[Any]] = {}
        for record in records:
            by_customer.setdefault(record.key.decode(), []).append(record)
        assert {len(v) for v in by_customer.values()} == {3}
        for record in by_customer["big"]:
            change = TierChanged.model_validate_json(record.value)
            assert change.attributes == {}
            assert (TRIMMED_HEADER, b"attributes") in record.headers
        for record in by_customer["small"]:
            assert TierChanged.model_validate_json(record.value).attributes == {"tier": "a"}
            assert TRIMMED_HEADER not in {name for name, _ in record.headers}
        # Each record carries its change's seq (actions orders a customer's changes by it).
        async with connect(scorer_db) as conn:
            stored = {r["id"]: r["seq"] for r in await conn.fetch(
                "SELECT id, seq FROM scorer.tier_change")}  # fmt: skip
        carried = {
            header(r.headers, "ce_id"): header(r.headers, CHANGE_SEQ_HEADER) for r in records
        }
        assert carried == {i: str(seq) for i, seq in stored.items()}
        assert registry.get_sample_value("tierstream_scorer_trimmed_changes_total") == 3
        assert await seqs(scorer_db, "tier_change_pending") == []


async def _by_seq(pool: Pool) -> list[StoredChange]:
    async with pool.acquire() as conn:
        ids = [r["customer_id"] for r in await conn.fetch("SELECT DISTINCT customer_id"
                                                          " FROM scorer.tier_change")]  # fmt: skip
    changes = [c for i in ids for c in await list_changes(pool, i, after_seq=None, limit=100)]
    return sorted(changes, key=lambda c: c.seq)


async def test_the_feed_never_skips_a_change_committed_after_a_later_one(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    async with relaying(base_env, scorer_db, topic_namespace) as (pool, relay, _):
        async with connect(scorer_db) as slow:
            held = slow.transaction()
            await held.start()  # a writer (a lane, the sweeper, another process) still busy
            await slow.execute(
                "INSERT INTO scorer.tier_change (id, customer_id, dimension, to_class, cause,"
                " rule, features, attributes, rules_version, occurred_at, emitted_at)"
                " VALUES ('late', 'slow', 'value_tier', 'gold', 'event', 'r', '{}', '{}', 'v',"
                " $1, $1)",
                NOW,
            )  # fmt: skip
            await apply_batch(pool, [purchase("p1", "quick", 3)], [], group_id=SCORER_GROUP,
                              scoring=SCORING, now=NOW)  # fmt: skip
            await relay.drain()
            read = await list_all_changes(pool, since=None, dimension=None, after_seq=None,
                                          limit=100)  # fmt: skip
            assert {c.change.customer_id for c in read} == {"quick"}
            await held.commit()
        late_seq = max(c.seq for c in await list_changes(pool, "slow", after_seq=None, limit=9))
        assert late_seq < max(c.seq for c in await list_changes(pool, "quick", after_seq=None,
                                                                limit=9))  # fmt: skip
        await relay.drain()
        after = read[-1].position
        newer = await list_all_changes(pool, since=None, dimension=None, after_seq=after,
                                       limit=100)  # fmt: skip
        assert [c.change.id for c in newer] == ["late"]


async def test_a_drain_locked_out_by_another_round_says_so(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    async with relaying(base_env, scorer_db, topic_namespace) as (_, relay, _):
        async with connect(scorer_db) as other:
            await other.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK_KEY)
            assert await relay.drain() is False
            await other.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)
        assert await relay.drain() is True


async def test_a_bounded_drain_leaves_a_backlog_to_the_relay_loop(
    base_env: dict[str, str], scorer_db: str, kafka_bootstrap: str, topic_namespace: str
) -> None:
    # The consumer publishes after each batch, in a few rounds at most: draining a backlog
    # of other writers' changes (a rules change's) it stopped polling for as long.
    async with relaying(base_env, scorer_db, topic_namespace, batch=2) as (pool, relay, _):
        await apply_batch(pool, [purchase("p1", "a", 3), purchase("p2", "b", 3, "5000")], [],
                          group_id=SCORER_GROUP, scoring=SCORING, now=NOW)  # fmt: skip
        assert len(await seqs(scorer_db, "tier_change_pending")) == 6
        assert await relay.drain(rounds=2) is False  # changes left: wake the relay loop
        assert len(await seqs(scorer_db, "tier_change_pending")) == 2
        assert await relay.drain(rounds=2) is True
        assert await seqs(scorer_db, "tier_change_pending") == []
