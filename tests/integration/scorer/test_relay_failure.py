"""The relay when the broker is unreachable: a round fails loudly, nothing is marked
published, the backlog gauge keeps counting, and once the broker is back every change goes
out (at least once: subscribers de-duplicate by id).

The relay's producer talks to a private broker through a `GatedBroker` (a TCP gate the
broker advertises, tests/faults/outages.py): closing the gate cuts every connection and
refuses new ones, while the broker keeps its log.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiokafka.errors import KafkaError, RequestTimedOutError

from services.scorer.batch import apply_batch
from services.scorer.evaluation import Scoring
from services.scorer.relay import OutboxRelay
from services.scorer.settings import ScorerSettings
from shared.domain.rules import load_rules
from shared.kafka import header
from shared.metrics import new_registry
from shared.topics import SCORER_GROUP
from tests.faults.outages import GatedBroker
from tests.integration.scorer.support import (
    NOW,
    connect,
    purchase,
    read_topic,
    relaying,
    seqs,
    wait_until,
)

SCORING = Scoring(load_rules(ScorerSettings().rules_file))
BACKLOG_GAUGE = "tierstream_scorer_outbox_backlog_changes"
# The producer gives a batch up (KafkaTimeoutError) after this long without the broker.
REQUEST_TIMEOUT_MS = "2000"


async def _changes(database_url: str) -> dict[int, str]:
    """seq -> id of every tier change committed."""
    async with connect(database_url) as conn:
        return {
            r["seq"]: r["id"] for r in await conn.fetch("SELECT seq, id FROM scorer.tier_change")
        }


async def test_a_relay_round_without_the_broker_fails_and_leaves_every_change_pending(
    base_env: dict[str, str], scorer_db: str, gated_broker: GatedBroker, topic_namespace: str
) -> None:
    env = {
        **base_env,
        "KAFKA_BOOTSTRAP_SERVERS": gated_broker.bootstrap_servers,
        "KAFKA_REQUEST_TIMEOUT_MS": REQUEST_TIMEOUT_MS,
    }
    registry = new_registry()
    async with relaying(env, scorer_db, topic_namespace, registry=registry,
                        batch=4) as (pool, relay, topic):  # fmt: skip
        # Before the outage the relay works (and its producer knows the topic's partitions).
        await apply_batch(pool, [purchase("p1", "a", 3), purchase("p2", "b", 3, "5000")], [],
                          group_id=SCORER_GROUP, scoring=SCORING, now=NOW)  # fmt: skip
        assert await relay.drain() is True
        before = await seqs(scorer_db, "tier_change_published")
        assert len(before) == 6 and registry.get_sample_value(BACKLOG_GAUGE) == 0

        await apply_batch(
            pool, [purchase(f"q{i}", f"c{i}", 2, "3000") for i in range(3)], [],
            group_id=SCORER_GROUP, scoring=SCORING, now=NOW,
        )  # fmt: skip
        waiting = sorted(set(await seqs(scorer_db, "tier_change")) - set(before))
        assert len(waiting) == 9  # three dimensions for each of three new customers

        await gated_broker.gate.close()
        with pytest.raises(KafkaError):
            await relay.step()  # one round: its publish is never acknowledged
        assert await seqs(scorer_db, "tier_change_pending") == waiting
        assert await seqs(scorer_db, "tier_change_published") == before
        assert registry.get_sample_value(BACKLOG_GAUGE) == len(waiting)
        with pytest.raises(KafkaError):
            await relay.drain()  # what the consumer calls after a batch: it fails the same way
        assert await seqs(scorer_db, "tier_change_pending") == waiting
        assert await seqs(scorer_db, "tier_change_published") == before
        assert registry.get_sample_value(BACKLOG_GAUGE) == len(waiting)

        await gated_broker.gate.open()
        await wait_until(lambda: _drains(relay))  # the producer reconnects by itself
        assert await seqs(scorer_db, "tier_change_pending") == []
        assert await seqs(scorer_db, "tier_change_published") == before + waiting
        assert registry.get_sample_value(BACKLOG_GAUGE) == 0

    changes = await _changes(scorer_db)
    records = await read_topic(gated_broker.bootstrap_servers, topic, expect=len(changes))
    on_the_topic = Counter(header(r.headers, "ce_id") for r in records)
    # Every change, and nothing else. A retried round after the reopening may repeat one the
    # broker had already taken (documented: subscribers de-duplicate by id), so not "once".
    assert set(on_the_topic) == set(changes.values())


async def _drains(relay: OutboxRelay) -> bool:
    """One drain after the gate reopened; False when the producer was not reconnected yet."""
    try:
        return await relay.drain()
    except KafkaError:
        return False


async def test_a_change_dated_at_the_calendars_edge_is_published_once_and_marked(
    base_env: dict[str, str], scorer_db: str, topic_namespace: str
) -> None:
    # Rows written before ingest refused 0001-01-01T00:00:00Z hold -infinity, which asyncpg
    # reads as a naive datetime.min: the relay's latency metric raised TypeError after the
    # send, so the round rolled back, and every retry published the round again, forever.
    registry = new_registry()
    async with relaying(base_env, scorer_db, topic_namespace,
                        registry=registry) as (pool, relay, topic):  # fmt: skip
        await apply_batch(pool, [purchase("p1", "a", 3), purchase("p2", "b", 3, "5000")], [],
                          group_id=SCORER_GROUP, scoring=SCORING, now=NOW)  # fmt: skip
        async with connect(scorer_db) as conn:
            await conn.execute(
                "UPDATE scorer.tier_change SET occurred_at = '-infinity' WHERE customer_id = 'a'"
            )
        changes = await _changes(scorer_db)
        assert await relay.drain() is True
        assert await seqs(scorer_db, "tier_change_pending") == []
        published = "tierstream_scorer_published_changes_total"
        assert registry.get_sample_value(published) == len(changes)
    records = await read_topic(base_env["KAFKA_BOOTSTRAP_SERVERS"], topic, expect=len(changes))
    assert sorted(header(r.headers, "ce_id") or "" for r in records) == sorted(changes.values())


async def test_a_round_that_fails_part_of_the_way_keeps_each_customers_changes_in_order(
    base_env: dict[str, str], scorer_db: str, topic_namespace: str
) -> None:
    # One partition, a batch per change (as a large backlog round makes several batches per
    # partition), and the first produce request hanging past the request timeout: its batch
    # failed while the partition's later batches were written, and the retried round put
    # the customer's first change after its second.
    env = {**base_env, "TIERSTREAM_PARTITIONS": "1", "KAFKA_REQUEST_TIMEOUT_MS": "1000"}
    one_per_batch = {"max_batch_size": 64}
    async with relaying(env, scorer_db, topic_namespace,
                        producer_options=one_per_batch) as (pool, relay, topic):  # fmt: skip
        client = relay.producer.client
        real_send, produce_requests = client.send, 0

        async def first_produce_hangs(node_id: int, request: Any, *args: Any, **kw: Any) -> Any:
            nonlocal produce_requests
            if type(request).__name__.startswith("ProduceRequest"):
                produce_requests += 1
                if produce_requests == 1:
                    await asyncio.sleep(1.2)
                    raise RequestTimedOutError()
            return await real_send(node_id, request, *args, **kw)

        client.send = first_produce_hangs
        await apply_batch(pool, [purchase("p1", "a", 3)], [], group_id=SCORER_GROUP,
                          scoring=SCORING, now=NOW)  # fmt: skip
        in_seq_order = [i for _, i in sorted((await _changes(scorer_db)).items())]
        assert len(in_seq_order) == 3
        with pytest.raises(KafkaError):
            await relay.step()
        await asyncio.sleep(1.0)  # anything the failed round left in the producer goes out
        assert await relay.drain() is True  # the retried round
    records = await read_topic(base_env["KAFKA_BOOTSTRAP_SERVERS"], topic, expect=3)
    first_seen = list(dict.fromkeys(header(r.headers, "ce_id") for r in records))
    assert first_seen == in_seq_order
