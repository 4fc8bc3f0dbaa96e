"""The consumer applies every distinct event exactly once, whatever the order or duplication."""

from __future__ import annotations

import random
import re

from structlog.testing import capture_logs

from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.fenced_consumer import ANOTHER_LOG
from shared.kafka_batches import KeyPartitioner
from shared.topics import SCORER_GROUP
from tests.faults.outages import GatedBroker, cut_off_database
from tests.integration.scorer.support import (
    NOW,
    EventMaker,
    assert_matches_reference,
    connect,
    count,
    customer_rows,
    folded,
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
from tests.support.infra import recreate_topic
from tests.support.metrics_text import sample_value

OFFSETS_SUM = "SELECT coalesce(sum(next_offset), 0) FROM scorer.consumer_offset"


async def test_redelivered_event_ids_are_counted_once(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    events = [purchase(f"p{i}", "c1", days_ago=10 + i, amount="1000") for i in range(4)]
    route = topic_router(topic_namespace)
    async with running_scorer(scorer_settings(base_env), clock):
        await produce(kafka_bootstrap, route, events + events[:2])  # duplicates in one batch
        await wait_until(lambda: _consumed(scorer_db, 6))
        await produce(kafka_bootstrap, route, events)  # and redelivered later
        await wait_until(lambda: _consumed(scorer_db, 10))
    rows = await customer_rows(scorer_db)
    assert rows["c1"]["state"]["lifetime_orders"] == 4
    assert rows["c1"]["state"]["lifetime_spend"] == "4000"
    assert await count(scorer_db, "SELECT count(*) FROM scorer.inbox") == 4
    assert_matches_reference(rows, reference(events, now=NOW))


async def test_out_of_order_events_give_the_exact_state(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    rng = random.Random(7)
    makers: list[EventMaker] = [purchase, login, support]
    events = [
        maker(f"e{i}", f"c{i % 7}", days_ago=rng.uniform(0, 400))
        for i, maker in enumerate(makers * 40)
    ]
    events.append(support("nps", "c3", days_ago=1, nps=3))
    rng.shuffle(events)  # event time order and arrival order disagree
    async with running_scorer(scorer_settings(base_env), clock):
        await produce(kafka_bootstrap, topic_router(topic_namespace), events)
        await wait_until(lambda: _consumed(scorer_db, len(events)))
    rows = await customer_rows(scorer_db)
    assert_matches_reference(rows, reference(events, now=NOW))
    assert rows["c3"]["lifecycle_stage"] == "at_risk"  # the detractor NPS decided it


async def _consumed(database_url: str, records: int) -> bool:
    return await count(database_url, OFFSETS_SUM) >= records


async def test_stored_offsets_past_the_logs_end_are_rewound_to_its_start(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    # The database outlived the log (the embedded broker started again, a topic created
    # again): before, every new record was taken for one applied, and the lag read 0.
    route = topic_router(topic_namespace)
    events = [login(f"l{i}", "b", days_ago=1) for i in range(5)]
    topic = route(events[0])
    async with connect(scorer_db) as conn:
        await conn.execute(
            "INSERT INTO scorer.consumer_offset (group_id, topic, partition, next_offset)"
            " SELECT $1, $2, p, 1000 FROM generate_series(0, 2) AS p",
            SCORER_GROUP, topic,
        )  # fmt: skip
    settings = scorer_settings(base_env)
    async with running_scorer(settings, clock):
        await produce(kafka_bootstrap, route, events)
        await wait_until(lambda: folded(scorer_db, "b", events=5))
        text = await metrics_text(settings) or ""
    partition = KeyPartitioner().partition(b"b", [0, 1, 2])
    stored = await count(
        scorer_db, "SELECT next_offset FROM scorer.consumer_offset WHERE topic = $1"
        " AND partition = $2", topic, partition,
    )  # fmt: skip
    assert stored == 5
    rewound = 'tierstream_scorer_offsets_rewound_total{{partition="{}",topic="{}"}}'.format
    assert f"{rewound(partition, topic)} 1.0" in text
    # Every assigned partition is exported from the start: a series born at 1 shows no
    # increase(), so the first rewind of a partition was invisible to the dashboard.
    # The partitions of another event topic, which nothing rewound.
    other = route(purchase("p", "b", days_ago=1))
    for each in (0, 1, 2):
        assert f"{rewound(each, other)} 0.0" in text


async def test_an_event_topic_created_again_and_grown_past_the_stored_offset_counts_the_skip(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    # A reviewer's move to a new cluster: the new log had grown past the offsets stored from
    # the old one when the scorer started, which sought into its middle and never read its
    # first records (600 of 1,800 events), with no metric and a lag of 0.
    settings = scorer_settings({**base_env, "TIERSTREAM_PARTITIONS": "1"})
    route = topic_router(topic_namespace)
    topic = route(login("x", "a", days_ago=1))
    async with running_scorer(settings, clock):
        await produce(kafka_bootstrap, route, [login(f"a{i}", "a", days_ago=1) for i in range(4)])
        await wait_until(lambda: folded(scorer_db, "a", events=4))
    # Started again on the same log: nothing is skipped.
    async with running_scorer(settings, clock):
        await produce(kafka_bootstrap, route, [login(f"a{i}", "a", days_ago=1) for i in (4, 5)])
        await wait_until(lambda: folded(scorer_db, "a", events=6))
        assert _skipped(await metrics_text(settings) or "", topic) == 0  # exported at 0

    await recreate_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, route, [login(f"b{i}", "b", days_ago=1) for i in range(8)])
    with capture_logs() as logs:
        async with running_scorer(settings, clock):
            await wait_until(lambda: folded(scorer_db, "b", events=2))  # b6 and b7
            text = await wait_until(lambda: _skipped_text(settings, topic, 6))
    other = route(purchase("p", "b", days_ago=1))
    assert _skipped(text, other) == 0  # exported, nothing skipped
    [line] = [e for e in logs if e["event"].startswith("records skipped")]
    assert line["event"] == "records skipped: the log does not hold the stored offset"
    assert (line["topic"], line["partition"], line["stored"], line["first"]) == (topic, 0, 6, 5)
    assert (line["skipped"], line["cause"]) == (6, ANOTHER_LOG)
    assert await count(scorer_db, OFFSETS_SUM) == 8


def _skipped(text: str, topic: str) -> float | None:
    return sample_value(text, "tierstream_scorer_offsets_skipped_total", topic=topic, partition="0")


async def _skipped_text(settings: ScorerSettings, topic: str, skipped: float) -> str | None:
    text = await metrics_text(settings) or ""
    return text if _skipped(text, topic) == skipped else None


async def test_the_lag_keeps_growing_while_postgres_is_away(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    # Before, every step failed reading the stored offsets before it polled, and the lag
    # stayed what it was when the outage began: no lag alert, a flat dashboard.
    settings = scorer_settings({**base_env, "TIERSTREAM_PARTITIONS": "1"})
    route = topic_router(topic_namespace)
    async with running_scorer(settings, clock):
        await produce(kafka_bootstrap, route, [login("a0", "a", days_ago=1)])
        await wait_until(lambda: folded(scorer_db, "a", events=1))
        await cut_off_database(scorer_db, allow=False, application_name="tierstream-scorer")
        try:
            await produce(kafka_bootstrap, route, [login("b0", "b", days_ago=1)])
            # Each of the scorer's loops logs its first failure with a traceback, rendered on
            # this event loop: over a second each here, far more on a loaded machine.
            await wait_until(lambda: _lag(settings, at_least=1), within=120)  # that batch failed
            later = [login(f"b{i}", "b", days_ago=1) for i in range(1, 50)]
            await produce(kafka_bootstrap, route, later)
            await wait_until(lambda: _lag(settings, at_least=50), within=120)
        finally:
            await cut_off_database(scorer_db, allow=True, application_name="tierstream-scorer")
        await wait_until(lambda: folded(scorer_db, "b", events=50), within=60)
        await wait_until(lambda: _lag(settings, at_most=0))


async def test_the_fetch_age_grows_while_the_broker_is_away_and_drops_when_it_is_back(
    base_env: dict[str, str],
    scorer_db: str,
    gated_broker: GatedBroker,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    # The lag keeps its last value while nothing is heard from the broker, and the
    # consumer's polls come back empty without an error: nothing showed the outage.
    broker = {"KAFKA_BOOTSTRAP_SERVERS": gated_broker.bootstrap_servers}
    settings = scorer_settings({**base_env, "TIERSTREAM_PARTITIONS": "1", **broker})
    route = topic_router(topic_namespace)
    async with running_scorer(settings, clock):
        await produce(gated_broker.bootstrap_servers, route, [login("a0", "a", days_ago=1)])
        await wait_until(lambda: folded(scorer_db, "a", events=1))
        await wait_until(lambda: _fetch_age(settings, at_most=2))
        await gated_broker.gate.close()
        try:
            await wait_until(lambda: _fetch_age(settings, at_least=3), within=20)
        finally:
            await gated_broker.gate.open()
        await wait_until(lambda: _fetch_age(settings, at_most=2), within=60)


async def _fetch_age(
    settings: ScorerSettings, *, at_least: float = 0, at_most: float | None = None
) -> bool:
    """The largest fetch age of the logins topic's partitions is in [at_least, at_most]."""
    text = await metrics_text(settings) or ""
    ages = [float(v) for v in re.findall(
        r'^tierstream_scorer_consumer_fetch_age_seconds\{[^}]*logins[^}]*\} (\S+)$', text, re.M
    )]  # fmt: skip
    return bool(ages) and at_least <= max(ages) and (at_most is None or max(ages) <= at_most)


async def _lag(settings: ScorerSettings, *, at_least: int = 0, at_most: int | None = None) -> bool:
    text = await metrics_text(settings) or ""
    lags = [float(v) for v in re.findall(
        r'^tierstream_scorer_consumer_lag_records\{[^}]*logins[^}]*\} (\S+)$', text, re.M
    )]  # fmt: skip
    return bool(lags) and at_least <= sum(lags) and (at_most is None or sum(lags) <= at_most)
