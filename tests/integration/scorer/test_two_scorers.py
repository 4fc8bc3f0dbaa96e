"""Two scorer processes in one consumer group split the partitions and keep state exact."""

from __future__ import annotations

import re

from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from tests.integration.scorer.support import (
    NOW,
    EventMaker,
    assert_matches_reference,
    assigned_partitions,
    count,
    customer_rows,
    login,
    metrics_text,
    produce,
    purchase,
    reference,
    running_scorer,
    scorer_settings,
    support,
    topic_router,
    wait_until,
)

PROCESSED = re.compile(r'tierstream_scorer_events_total\{outcome="processed",type="\w+"\} (\S+)')


async def test_two_scorers_sharing_the_partitions_produce_the_exact_state(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    makers: list[EventMaker] = [purchase, login, support]
    waves = [
        [maker(f"w{w}-{i}", f"c{i % 40}", days_ago=(i * 7 + w) % 200)
         for i, maker in enumerate(makers * 40)]
        for w in range(3)
    ]  # fmt: skip
    route = topic_router(topic_namespace)
    # A group of their own: its two members leaving one right after the other left the
    # embedded broker's group unjoinable for minutes (in the shared one, the session's next
    # scorer test never got in).
    group = f"scorer-{topic_namespace}"
    first, second = (scorer_settings(base_env, group_id=group) for _ in range(2))
    async with running_scorer(first, clock):
        await produce(kafka_bootstrap, route, waves[0])
        await wait_until(lambda: _consumed(scorer_db, len(waves[0])))
        async with running_scorer(second, clock):
            await wait_until(lambda: _split(first, second), within=40)
            await produce(kafka_bootstrap, route, waves[1] + waves[0][:30])  # with redeliveries
            await produce(kafka_bootstrap, route, waves[2])
            total = sum(len(w) for w in waves) + 30
            await wait_until(lambda: _consumed(scorer_db, total), within=40)
            # A batch is counted after its commit, once its connection is back in the pool
            await wait_until(lambda: _both_processed(first, second))
    events = [e for wave in waves for e in wave]
    assert_matches_reference(await customer_rows(scorer_db), reference(events, now=NOW))
    assert await count(scorer_db, "SELECT count(*) FROM scorer.inbox") == len(events)


async def _consumed(database_url: str, records: int) -> bool:
    sql = "SELECT coalesce(sum(next_offset), 0) FROM scorer.consumer_offset"
    return await count(database_url, sql) >= records


async def _split(first: ScorerSettings, second: ScorerSettings) -> bool:
    """Both scorers own partitions, and no partition is owned twice."""
    a = assigned_partitions(await metrics_text(first))
    b = assigned_partitions(await metrics_text(second))
    return bool(a) and bool(b) and not (a & b) and len(a | b) == 9


async def _both_processed(*scorers: ScorerSettings) -> bool:
    pages = [await metrics_text(s) or "" for s in scorers]
    return all(sum(float(n) for n in PROCESSED.findall(page)) > 0 for page in pages)
