"""Scenario 3: the scorer crashes between committing changes and publishing them.

First the outbox relay is held off (the test holds its advisory lock) so a whole stream's
changes are committed and none published, and the scorer is SIGKILLed in that state.
Then the relay runs, and the scorer is frozen (SIGSTOP) the moment changes are on the topic
but not yet marked published; still so after the freeze, it is SIGKILLed in that window.
Pass: every outbox row ends up on the topic (set equality by id), the changes caught in the
window are republished with the same id, key and bytes, and the actions service, the
subscriber, acts on each change once (its inbox drops the republished copies).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.scorer.relay import RELAY_LOCK_KEY
from shared.embedded import EmbeddedKafka
from shared.kafka import header
from tests.faults.harness import Harness, ServiceProcess, stop_all
from tests.faults.pipeline import (
    Outcome,
    Pipeline,
    check_actions,
    check_pipeline,
    new_receiver,
    wait_actions_done,
    wait_scorer_done,
)
from tests.faults.verify import connect, eventually, rows, scalar, scorer_offsets
from tests.faults.workload import mixed_events, with_redeliveries
from tests.integration.actions.support import serving

PUBLISHED = "SELECT id FROM scorer.tier_change JOIN scorer.tier_change_published USING (seq)"
TOTAL = "SELECT count(*) FROM scorer.tier_change"


class TopicWatcher:
    """Reads the tier-changed topic as it fills: which change ids are on it, how often."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        self.ids: Counter[str] = Counter()

    async def run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=20)
            self.ids.update(header(r.headers, "ce_id") or "" for rs in batch.values() for r in rs)


@contextlib.asynccontextmanager
async def watching(bootstrap: str, topic: str) -> AsyncIterator[TopicWatcher]:
    watcher = TopicWatcher(bootstrap, topic)
    await watcher.consumer.start()
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.consumer.stop()


async def test_a_crash_between_commit_and_publish_loses_no_change_and_keeps_its_id(
    private_broker: EmbeddedKafka, pipeline_db: str, harness: Harness, topic_namespace: str
) -> None:
    sent = with_redeliveries(mixed_events(1200, 150, seed=31), 0.05, seed=32)
    receiver = new_receiver()
    p = Pipeline(
        harness,
        private_broker.bootstrap_servers,
        pipeline_db,
        topic_namespace,
        receiver,
        {"SCORER_RELAY_BATCH": "200", "SCORER_BATCH_MAX_RECORDS": "200"},
    )
    await p.create_topics()
    outcome, kill_log = Outcome("relay-crash", records=len(sent)), list[dict[str, Any]]()
    async with serving(receiver), watching(p.bootstrap, p.topics.tier_changed) as watcher:
        async with connect(pipeline_db) as lock, connect(pipeline_db) as blocker:
            await lock.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK_KEY)  # the relay idles
            scorer, actions = await asyncio.gather(p.start("scorer"), p.start("actions"))
            await p.stream(sent, chunk=500, pause_s=0).run()
            await eventually(
                lambda: _committed(pipeline_db, len(sent)), within=90, what="every record committed"
            )
            assert not await rows(pipeline_db, PUBLISHED)  # all committed, not one published
            kill_log.append({"unpublished": await scalar(pipeline_db, TOTAL)})
            async with blocker.transaction():
                # SHARE mode: the relay can read and publish, but its mark waits (the
                # consumer's inserts, and their pending rows, go on).
                await blocker.execute("LOCK TABLE scorer.tier_change_published IN SHARE MODE")
                scorer.restart_after_kill()  # crash 1: all committed, none published
                await lock.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)
                kill_log.append(await _kill_between_ack_and_mark(scorer, watcher, pipeline_db))
        caught: set[str] = set(kill_log[-1].pop("ids"))
        await wait_scorer_done(p, len(sent))
        records = await check_pipeline(p, sent, outcome)
        purchases = sum(1 for e in sent if e.type == "purchase")
        await wait_actions_done(p, len(records), purchases)
        dropped = await actions.metric(
            "tierstream_actions_records_total", source="tier_changed", outcome="duplicate"
        )
        assert await stop_all(scorer, actions) == [0, 0]
    _assert_stable_ids(records)
    await check_actions(p, records, outcome)
    outcome.kills = harness.kills
    outcome.notes = {"kill_log": kill_log, "actions_dropped_duplicates": dropped}
    outcome.print()
    assert outcome.kills == {"scorer": 2, "actions": 0}
    assert caught, "no change was caught between the broker's ack and the mark"
    republished = {
        i for i, n in Counter(header(r.headers, "ce_id") for r in records).items() if n > 1
    }
    assert caught <= republished  # caught in the window: sent again
    assert dropped == outcome.topic_records - outcome.changes  # ... and dropped by actions


async def _committed(database_url: str, records: int) -> bool:
    return await scorer_offsets(database_url) >= records


async def _kill_between_ack_and_mark(
    scorer: ServiceProcess, watcher: TopicWatcher, database_url: str
) -> dict[str, Any]:
    """SIGKILL the scorer while changes are on the topic and not marked published (the
    caller's SHARE lock holds the relay's mark back for as long as it wishes)."""
    await eventually(
        lambda: _in_window(watcher, database_url),
        within=60,
        what="changes on the topic not yet marked published",
    )
    await asyncio.sleep(0.5)  # the rest of the batch reaches the watcher
    caught = await _in_window(watcher, database_url)
    scorer.restart_after_kill()
    return {"caught": len(caught), "on_topic": len(watcher.ids), "ids": sorted(caught)}


async def _in_window(watcher: TopicWatcher, database_url: str) -> set[str]:
    on_topic = set(watcher.ids)  # read first: `published` only grows afterwards
    return on_topic - {r["id"] for r in await rows(database_url, PUBLISHED)}


def _assert_stable_ids(records: list[Any]) -> None:
    """A change published twice has the same id header, key and body both times."""
    seen: dict[str, set[tuple[bytes, bytes]]] = defaultdict(set)
    for record in records:
        seen[header(record.headers, "ce_id") or ""].add((record.key, record.value))
    assert all(len(v) == 1 for v in seen.values()), "a republished change differs"
