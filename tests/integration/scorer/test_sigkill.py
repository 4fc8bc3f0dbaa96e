"""SIGKILL the scorer process mid-stream, restart it: exact state, every change published."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.scorer.relay import BACKLOG_QUERY
from services.scorer.settings import ScorerSettings
from shared.embedded import free_port
from shared.kafka import ensure_topics, header
from shared.topics import Topics
from tests.integration.scorer.support import (
    NOW,
    EventMaker,
    assert_matches_reference,
    connect,
    count,
    customer_rows,
    login,
    produce,
    purchase,
    read_topic,
    reference,
    support,
    topic_router,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[3]


@contextmanager
def scorer_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.scorer` with the test's environment; killed if still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.scorer"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_sigkill_mid_stream_then_restart_gives_the_exact_state(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(42)
    makers: list[EventMaker] = [purchase, purchase, login, support]
    events = [
        rng.choice(makers)(f"e{i}", f"c{rng.randrange(150)}", days_ago=rng.uniform(0, 400))
        for i in range(2400)
    ]
    sent = events + rng.sample(events, 300)  # redeliveries
    rng.shuffle(sent)
    waves = [sent[i::3] for i in range(3)]
    env = {
        **base_env,
        "TIERSTREAM_NOW": NOW.isoformat(),
        "SCORER_PORT": str(free_port()),
        "SCORER_BATCH_MAX_RECORDS": "40",
        "SCORER_RELAY_BATCH": "25",
    }  # small txs: kills land inside
    await ensure_topics(ScorerSettings.model_validate(base_env), Topics(topic_namespace).all())
    route, log, produced = topic_router(topic_namespace), tmp_path / "scorer.log", 0
    kills = 0
    for wave in waves[:2]:
        await produce(kafka_bootstrap, route, wave)
        produced += len(wave)
        halfway = produced - len(wave) // 2
        with scorer_process(env, log) as proc:
            await wait_until(
                functools.partial(_claimed_more_than, scorer_db, halfway), within=60, every=0.05
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
    await produce(kafka_bootstrap, route, waves[2])
    with scorer_process(env, log) as proc:
        await wait_until(lambda: _offsets_at(scorer_db, len(sent)), within=60)
        await wait_until(lambda: _all_published(scorer_db), within=30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    assert kills == 2
    assert_matches_reference(await customer_rows(scorer_db), reference(events, now=NOW))
    assert await count(scorer_db, "SELECT count(*) FROM scorer.inbox") == len(events)
    ids = await _change_ids(scorer_db)
    published = await read_topic(
        kafka_bootstrap, Topics(topic_namespace).tier_changed, expect=len(ids)
    )
    on_topic = [header(r.headers, "ce_id") for r in published]
    assert set(on_topic) == ids  # every committed change, nothing from a rolled-back batch


async def _claimed_more_than(database_url: str, n: int) -> bool:
    # Counts distinct claimed events; redeliveries make this lag the offsets a little.
    return await count(database_url, "SELECT count(*) FROM scorer.inbox") > n * 0.8


async def _offsets_at(database_url: str, n: int) -> bool:
    return (
        await count(
            database_url, "SELECT coalesce(sum(next_offset), 0) FROM scorer.consumer_offset"
        )
        >= n
    )


async def _all_published(database_url: str) -> bool:
    return await count(database_url, BACKLOG_QUERY) == 0


async def _change_ids(database_url: str) -> set[str]:
    async with connect(database_url) as conn:
        return {r["id"] for r in await conn.fetch("SELECT id FROM scorer.tier_change")}
