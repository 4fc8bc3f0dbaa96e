"""Poison records go to the dead-letter topic; time alone re-classifies silent customers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.scorer import consumer, evaluation
from services.scorer.settings import ScorerSettings
from shared.clock import FixedClock
from shared.domain.rules import default_rules_path
from shared.domain.state import CustomerState, Event, fold
from shared.kafka import header
from shared.topics import Topics
from tests.integration.scorer.support import (
    connect,
    customer_rows,
    folded,
    login,
    logins_through_an_outage,
    metrics_text,
    produce,
    produce_raw,
    purchase,
    read_topic,
    running_scorer,
    scorer_settings,
    topic_router,
    wait_for_sweeps,
    wait_until,
)

FAR = datetime(9999, 12, 31, tzinfo=UTC)
# In UTC it falls before year 1: the contract refuses it (the domain could not fold it).
BEFORE_YEAR_1 = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))


async def test_poison_records_are_dead_lettered_and_the_partition_keeps_flowing(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    topic = Topics(topic_namespace).purchases
    good = purchase("good-1", "c1", days_ago=1)
    missing_amount = {k: v for k, v in json.loads(good.model_dump_json()).items() if k != "amount"}
    unfoldable = good.model_copy(
        update={"event_id": "early", "customer_id": "early", "occurred_at": BEFORE_YEAR_1}
    )
    # Its windows end past datetime.max: it folds, and is never due for a review.
    year_9999 = good.model_copy(
        update={"event_id": "far", "customer_id": "far", "occurred_at": FAR}
    )
    poison = [
        b"{not json",
        b'{"type": "refund", "event_id": "x"}',
        json.dumps(missing_amount).encode(),
        unfoldable.model_dump_json().encode(),
    ]
    settings = scorer_settings(base_env)
    async with running_scorer(settings, clock):
        # Same key: one partition, the poison first and the good event behind it.
        await produce_raw(kafka_bootstrap, topic, [(b"c1", value) for value in poison])
        await produce(kafka_bootstrap, topic_router(topic_namespace), [good, year_9999])
        rows = await wait_until(lambda: _rows_of(scorer_db, {"c1", "far"}))
        metrics = await wait_until(lambda: _counted(settings, processed=2))
    assert rows["c1"]["state"]["lifetime_orders"] == 1
    assert rows["far"]["next_review_at"] is None
    assert "early" not in rows  # dead-lettered at decoding (no UTC equivalent), never folded
    dead = await read_topic(kafka_bootstrap, Topics.dlq(topic), expect=4)
    assert [r.value for r in dead] == poison
    assert {header(r.headers, "dlq_original_topic") for r in dead} == {topic}
    assert [int(header(r.headers, "dlq_original_offset") or -1) for r in dead] == [0, 1, 2, 3]
    assert "occurred_at: Input should lie after 0001-01-01T00:00:00Z" in (
        header(dead[3].headers, "dlq_error") or ""
    )
    async with connect(scorer_db) as conn:  # the partition that carried c1's five records
        partition = await conn.fetchval(
            "SELECT partition FROM scorer.consumer_offset WHERE topic = $1 AND next_offset >= 5",
            topic,
        )
    assert {header(r.headers, "dlq_original_partition") for r in dead} == {str(partition)}
    assert "amount" in (header(dead[2].headers, "dlq_error") or "")
    # Counted under their topic's type, whatever their bodies say (one claims `refund`).
    assert 'tierstream_scorer_events_total{outcome="dead_lettered",type="purchase"} 4.0' in metrics
    assert 'tierstream_scorer_events_total{outcome="processed",type="purchase"} 2.0' in metrics


async def test_only_the_event_that_cannot_be_folded_is_quarantined_not_its_neighbours(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ingest and decoding refuse what the domain cannot take, so a domain bug is simulated:
    # folding one event raises. Its neighbours of the same customer must still be applied.
    def fold_with_a_bug(state: CustomerState, event: Event, *, now: datetime) -> None:
        if event.event_id == "m-2":
            raise ArithmeticError("a domain bug")
        fold(state, event, now=now)

    monkeypatch.setattr(evaluation, "fold", fold_with_a_bug)
    monkeypatch.setattr(consumer, "fold", fold_with_a_bug)
    topic = Topics(topic_namespace).purchases
    events = [purchase(f"m-{i}", "mixed", days_ago=4 - i) for i in (1, 2, 3)]
    # Published before the scorer starts: all three arrive in its first batch, together.
    await produce_raw(kafka_bootstrap, topic, [(b"mixed", e.model_dump_json().encode())
                                               for e in events])  # fmt: skip
    settings = scorer_settings(base_env)
    async with running_scorer(settings, clock):
        rows = await wait_until(lambda: _rows_of(scorer_db, {"mixed"}))
        metrics = await wait_until(lambda: _counted(settings, processed=2))
    assert rows["mixed"]["state"]["lifetime_orders"] == 2  # its good events were applied
    # A valid event held back by a scorer fault, told from a record no one could read.
    assert 'tierstream_scorer_events_total{outcome="quarantined",type="purchase"} 1.0' in metrics
    assert 'tierstream_scorer_events_total{outcome="dead_lettered",type="purchase"} 0.0' in metrics
    dead = await read_topic(kafka_bootstrap, Topics.dlq(topic), expect=1)
    assert [r.value for r in dead] == [events[1].model_dump_json().encode()]
    assert "ArithmeticError: a domain bug" in (header(dead[0].headers, "dlq_error") or "")


async def _rows_of(database_url: str, customers: set[str]) -> dict[str, dict[str, Any]]:
    rows = await customer_rows(database_url)
    return rows if customers <= rows.keys() else {}


async def _counted(settings: ScorerSettings, *, processed: int) -> str | None:
    """The scorer's /metrics once it has counted `processed` purchases. A batch is counted
    after its commit, once its connection is back in the pool (one more round trip): its
    rows can be read before its counts (dead letters too) are on /metrics."""
    text = await metrics_text(settings) or ""
    found = re.search(
        r'^tierstream_scorer_events_total\{outcome="processed",type="purchase"\} (\S+)$', text, re.M
    )
    return text if found and float(found.group(1)) >= processed else None


async def test_a_customer_silent_for_over_30_days_becomes_at_risk_by_time_alone(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    events: list[Event] = [purchase("p1", "quiet", days_ago=20), login("l1", "quiet", days_ago=20)]
    settings = scorer_settings(base_env, sweep_interval_s=0.1)
    async with running_scorer(settings, clock):
        await produce(kafka_bootstrap, topic_router(topic_namespace), events)
        rows = await wait_until(lambda: folded(scorer_db, "quiet", events=2))
        assert rows["quiet"]["lifecycle_stage"] == "new"
        review = rows["quiet"]["next_review_at"]
        assert review is not None and review > clock.now()
        clock.advance(timedelta(days=9, hours=23))  # last login 29.96 days ago: not yet
        await wait_for_sweeps(settings)
        assert (await customer_rows(scorer_db))["quiet"]["lifecycle_stage"] == "new"
        clock.advance(timedelta(hours=2))  # 30.04 days: past the 30-day silence
        change = await wait_until(lambda: _time_change(scorer_db))
    assert (change["from_class"], change["to_class"], change["rule"]) == (
        "new",
        "at_risk",
        "at_risk",
    )
    assert json.loads(change["features"])["days_since_last_login"] > 30
    assert (await customer_rows(scorer_db))["quiet"]["lifecycle_stage"] == "at_risk"


async def test_a_late_sweep_stamps_each_time_change_when_it_happened_and_skips_none(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    # The scorer was down for 100 days: a customer who bought once, a day before, went
    # semi_active at 7 days, inactive at 30 and at_risk at 90, while nobody looked.
    events: list[Event] = [purchase("p1", "away", days_ago=1)]
    async with running_scorer(scorer_settings(base_env, sweep_interval_s=0.1), clock):
        await produce(kafka_bootstrap, topic_router(topic_namespace), events)
        await wait_until(lambda: folded(scorer_db, "away", events=1))
        bought = clock.now() - timedelta(days=1)
        clock.advance(timedelta(days=100))
        rows = await wait_until(lambda: _time_changes(scorer_db, 3))
    tick = timedelta(microseconds=1)  # a review time is the first instant past a threshold
    assert [(r["dimension"], r["from_class"], r["to_class"], r["occurred_at"]) for r in rows] == [
        ("activity_level", "active", "semi_active", bought + timedelta(days=7) + tick),
        ("activity_level", "semi_active", "inactive", bought + timedelta(days=30) + tick),
        ("lifecycle_stage", "new", "at_risk", bought + timedelta(days=90) + tick),
    ]
    assert {r["emitted_at"] for r in rows} == {clock.now()}
    final = (await customer_rows(scorer_db))["away"]
    assert (final["activity_level"], final["lifecycle_stage"]) == ("inactive", "at_risk")


async def test_after_an_outage_time_sweeps_wait_for_the_backlog_of_events(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
) -> None:
    # Down for 60 days while the customer kept logging in every 5 days: swept first, it
    # would look silent for 61 days (inactive, at_risk), be acted on, then come back.
    await logins_through_an_outage(base_env, scorer_db, kafka_bootstrap, topic_namespace, clock)
    settings = scorer_settings(base_env, sweep_interval_s=0.05)
    async with running_scorer(settings, clock):
        rows = await wait_until(lambda: folded(scorer_db, "back", events=12))
        await wait_for_sweeps(settings)  # with every partition read, nothing is due
    assert await _time_changes(scorer_db, 1) is None
    assert (rows["back"]["activity_level"], rows["back"]["lifecycle_stage"]) == ("active", "lead")


async def _time_changes(database_url: str, count: int) -> list[asyncpg.Record] | None:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT * FROM scorer.tier_change WHERE cause = 'time' ORDER BY occurred_at, seq"
        )
    return rows if len(rows) >= count else None


async def _time_change(database_url: str) -> asyncpg.Record | None:
    async with connect(database_url) as conn:
        return await conn.fetchrow(
            "SELECT * FROM scorer.tier_change"
            " WHERE cause = 'time' AND dimension = 'lifecycle_stage'"
        )


async def test_hysteresis_holds_a_downgrade_until_the_minimum_dwell_time(
    base_env: dict[str, str],
    scorer_db: str,
    kafka_bootstrap: str,
    topic_namespace: str,
    clock: FixedClock,
    tmp_path: Path,
) -> None:
    """The scorer keeps a class for `min_dwell_days`, reviews the customer when the hold
    ends, and only then emits the downgrade (rules: the defaults plus hysteresis)."""
    rules = tmp_path / "rules.yaml"
    text = default_rules_path().read_text(encoding="utf-8")
    assert "\nhysteresis: {}\n" in text
    rules.write_text(
        text.replace(
            "\nhysteresis: {}\n", "\nhysteresis:\n  lifecycle_stage: {min_dwell_days: 15}\n"
        ),
        encoding="utf-8",
    )
    events: list[Event] = [purchase("p1", "quiet", days_ago=20), login("l1", "quiet", days_ago=20)]
    settings = scorer_settings(base_env, sweep_interval_s=0.1, rules_file=rules)
    async with running_scorer(settings, clock):
        classified_at = clock.now()
        await produce(kafka_bootstrap, topic_router(topic_namespace), events)
        rows = await wait_until(lambda: folded(scorer_db, "quiet", events=2))
        assert rows["quiet"]["lifecycle_stage"] == "new"
        clock.advance(timedelta(days=10, hours=1))  # login 30.04 days ago: at_risk, but held
        hold_ends = classified_at + timedelta(days=15)
        row = await wait_until(lambda: _review_at(scorer_db, "quiet", hold_ends))
        assert row["lifecycle_stage"] == "new"
        assert await _time_change(scorer_db) is None
        clock.advance(timedelta(days=4, hours=22))  # still inside the dwell time
        await wait_for_sweeps(settings)
        assert await _time_change(scorer_db) is None
        clock.advance(timedelta(hours=2))  # the dwell time is over
        change = await wait_until(lambda: _time_change(scorer_db))
    assert (change["from_class"], change["to_class"], change["cause"]) == ("new", "at_risk", "time")
    assert (await customer_rows(scorer_db))["quiet"]["lifecycle_stage"] == "at_risk"


async def _review_at(database_url: str, customer_id: str, at: datetime) -> dict[str, Any] | None:
    """The customer's row once its next review is `at` (to the microsecond), else None."""
    row = (await customer_rows(database_url)).get(customer_id)
    return row if row is not None and row["next_review_at"] == at else None
