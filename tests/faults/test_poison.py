"""Scenario 6: poison records written straight onto every topic the services consume.

Invalid JSON, unknown type, missing and mistyped fields, a 1.2 MB payload, non-UTF-8
bytes, an empty value, a tombstone (null value), a JSON array, 50 000-deep nesting; each
lands between valid records of the same key (so the same partition).
Pass: every poison record is in `<topic>.dlq` with headers naming its original topic,
partition and offset and the error; the valid records around it are processed (the state
is exact and every change acted on); the DLQ metrics count exactly the poison records.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.embedded import EmbeddedKafka
from shared.kafka import header
from shared.topics import Topics
from tests.faults.harness import Harness, stop_all
from tests.faults.pipeline import Outcome, Pipeline, new_receiver, wait_scorer_done
from tests.faults.verify import (
    actions_duplicates,
    actions_offsets,
    consumed_changes,
    eventually,
    read_topic,
    state_mismatches,
)
from tests.faults.workload import NOW, mixed_events

VALID_PURCHASE = {
    "type": "purchase",
    "event_id": "x",
    "customer_id": "cust-1",
    "occurred_at": "2026-02-01T00:00:00+00:00",
    "order_id": "o",
    "amount": "5",
    "currency": "EUR",
}
POISON: dict[str, bytes | None] = {
    "invalid-json": b"{not json",
    "unknown-type": json.dumps({**VALID_PURCHASE, "type": "refund"}).encode(),
    "missing-fields": json.dumps({"type": "purchase", "event_id": "m"}).encode(),
    "wrong-types": json.dumps({**VALID_PURCHASE, "amount": "-5", "occurred_at": 1}).encode(),
    "huge": json.dumps({**VALID_PURCHASE, "category": "x" * 1_200_000}).encode(),
    "not-utf8": b"\xff\xfe\xfd garbage",
    "empty": b"",
    "tombstone": None,
    "array": b"[]",
    "deep": b"[" * 50_000 + b"]" * 50_000,
}
BAD_CHANGES: dict[str, bytes | None] = {
    "invalid-json": b"{not json",
    "unknown-dimension": json.dumps(
        {"id": "z", "customer_id": "c", "dimension": "mood", "from": None, "to": "happy"}
    ).encode(),
    "huge": json.dumps({"id": "h", "pad": "x" * 1_200_000}).encode(),
    "tombstone": None,
}
Position = tuple[str, int, int]
Record = tuple[str, bytes | None, bytes | None]


async def _produce(bootstrap: str, records: Sequence[Record]) -> list[Position]:
    """Send (topic, key, value) records in order; returns where each one landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        acks="all",
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        sent = [await producer.send(t, value=v, key=k) for t, k, v in records]
        metadata = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in metadata]


async def test_poison_records_go_to_the_dlq_with_their_origin_and_the_partitions_keep_flowing(
    private_broker: EmbeddedKafka, pipeline_db: str, harness: Harness, topic_namespace: str
) -> None:
    p = Pipeline(
        harness, private_broker.bootstrap_servers, pipeline_db, topic_namespace, new_receiver()
    )
    await p.create_topics()
    topics = p.topics
    before, after = (
        mixed_events(300, 40, seed=61, prefix="a"),
        mixed_events(300, 40, seed=62, prefix="b"),
    )
    scorer, actions = await asyncio.gather(p.start("scorer"), p.start("actions"))
    await p.stream(before, chunk=300, pause_s=0).run()
    poison = [(t, b"cust-1", v) for t in topics.events for v in POISON.values()]
    poison += [(topics.tier_changed, b"cust-1", v) for v in BAD_CHANGES.values()]
    positions = await _produce(p.bootstrap, poison)
    await p.stream(after, chunk=300, pause_s=0).run()
    records = len(before) + len(after) + len(POISON) * 3
    await wait_scorer_done(p, records)
    changes = await _valid_changes(p, topics)
    await eventually(
        lambda: _actions_consumed(p, len(changes) + len(BAD_CHANGES)),
        within=60,
        what="actions past the poison on the tier-changed topic",
    )
    scorer_dead = await scorer.metric("tierstream_scorer_events_total", outcome="dead_lettered")
    actions_dead = await actions.metric("tierstream_actions_dlq_records_total")
    assert await stop_all(scorer, actions) == [0, 0]
    dead = await _dead_letters(p, topics)
    mismatches = await state_mismatches(pipeline_db, [*before, *after], now=NOW)
    outcome = Outcome(
        "poison",
        events=len(before) + len(after),
        records=records + len(BAD_CHANGES),
        mismatches=len(mismatches),
        changes=len(changes),
        duplicates=await actions_duplicates(pipeline_db),
    )
    outcome.notes = {
        "poison_records": len(poison),
        "dlq_records": len(dead),
        "scorer_dlq_metric": scorer_dead,
        "actions_dlq_metric": actions_dead,
    }
    outcome.print()
    assert mismatches == []
    assert await consumed_changes(pipeline_db) == set(changes)
    _assert_dead_lettered(dead, positions, poison, topics)
    purchases_poison = len(POISON)  # the actions service reads the purchases topic too
    assert scorer_dead == 3 * len(POISON)
    assert actions_dead == len(BAD_CHANGES) + purchases_poison


async def _valid_changes(p: Pipeline, topics: Topics) -> set[str]:
    found = await read_topic(p.bootstrap, topics.tier_changed, at_least=1, within=30)
    return {i for r in found if (i := header(r.headers, "ce_id"))}


async def _actions_consumed(p: Pipeline, records: int) -> bool:
    return await actions_offsets(p.database_url, p.topics.tier_changed) >= records


async def _dead_letters(p: Pipeline, topics: Topics) -> list[Any]:
    out: list[Any] = []
    for topic in [*topics.events, topics.tier_changed]:
        out += await read_topic(p.bootstrap, Topics.dlq(topic), at_least=1, within=20)
    return out


def _assert_dead_lettered(
    dead: list[Any],
    positions: list[Position],
    poison: Sequence[Record],
    topics: Topics,
) -> None:
    """Each poison record dead-lettered with its origin and an error; by both consumers of
    the purchases topic (scorer and actions), by the one consumer of any other topic."""
    origins: Counter[Position] = Counter()
    refusers: dict[Position, set[str]] = {}
    for record in dead:
        origin = (
            header(record.headers, "dlq_original_topic") or "",
            int(header(record.headers, "dlq_original_partition") or -1),
            int(header(record.headers, "dlq_original_offset") or -1),
        )
        origins[origin] += 1
        refusers.setdefault(origin, set()).add(header(record.headers, "dlq_consumer_group") or "")
        assert header(record.headers, "dlq_error"), record.headers
        assert record.topic == Topics.dlq(origin[0])
        value = dict(zip(positions, (v for _, _, v in poison), strict=True))[origin] or b""
        # Huge payloads are cut to fit the broker's limit (KAFKA_MAX_MESSAGE_BYTES), flagged.
        assert value.startswith(record.value) and len(record.value) < 1_048_588
        cut = len(record.value) < len(value)
        assert (header(record.headers, "dlq_truncated") == "true") == cut
        assert cut == (len(value) > 1_000_000)
    expected = Counter({pos: 2 if pos[0] == topics.purchases else 1 for pos in positions})
    assert origins == expected
    # the header names who refused each copy: the two groups reading purchases, once each
    assert all(len(refusers[pos]) == expected[pos] and "" not in refusers[pos] for pos in positions)
