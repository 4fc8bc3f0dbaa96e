"""A customer whose re-evaluation raises does not stall the sweeps and rules migrations
that would reach it: it is set aside (logged, counted), and the others go on."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from unittest.mock import patch

from prometheus_client import CollectorRegistry

from services.scorer.batch import apply_batch
from services.scorer.db import Pool, create_pool
from services.scorer.evaluation import Scoring
from services.scorer.metrics import scorer_metrics
from services.scorer.sweeper import Sweeper
from shared.clock import FixedClock
from shared.domain.rules import default_rules_path, load_rules
from shared.metrics import new_registry
from shared.topics import SCORER_GROUP
from tests.integration.scorer.support import (
    NOW,
    RETRY,
    candidate,
    connect,
    customer_rows,
    purchase,
)
from tests.support.domain_faults import failing_for

SCORING = Scoring(load_rules(default_rules_path()))
CUSTOMERS = ["a", "broken", "z"]
LATER = NOW + timedelta(days=10)  # past the review on day 7: active -> semi_active


async def _bought_at_now(pool: Pool, customers: list[str]) -> None:
    events = [purchase(f"p-{c}-{i}", c, days_ago=i * 5, amount="600")
              for c in customers for i in range(10)]  # fmt: skip
    await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=SCORING, now=NOW)


async def _changes(database_url: str, cause: str) -> dict[str, int]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT customer_id, count(*) AS n FROM scorer.tier_change WHERE cause = $1"
            " GROUP BY customer_id",
            cause,
        )
    return {row["customer_id"]: row["n"] for row in rows}


def _count(registry: CollectorRegistry, name: str, cause: str) -> float:
    value = registry.get_sample_value(f"tierstream_scorer_{name}_total", {"cause": cause})
    return value or 0.0


async def test_a_time_sweep_sets_a_failing_customer_aside_and_tries_it_again_later(
    scorer_db: str,
) -> None:
    registry = new_registry()
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await _bought_at_now(pool, CUSTOMERS)
        # One customer a round: before, the failing one stayed the oldest due for good and
        # every sweep raised on it.
        sweeper = Sweeper(pool, scoring=lambda: SCORING, clock=FixedClock(LATER), batch=1,
                          metrics=scorer_metrics(registry), retry=RETRY)  # fmt: skip
        with failing_for("broken"):
            assert await sweeper.step() is False
        assert await _changes(scorer_db, "time") == {"a": 1, "z": 1}
        rows = await customer_rows(scorer_db)
        assert rows["broken"]["activity_level"] == "active"  # left as it was
        assert rows["broken"]["next_review_at"] == LATER + RETRY
        # A state cache's record of it carries the old review time: no longer current.
        assert rows["broken"]["version"] == rows["a"]["version"]
        assert _count(registry, "evaluation_failures", "time") == 1
        assert _count(registry, "sweep_customers", "time") == 2

        sweeper.clock = FixedClock(LATER + RETRY)  # fixed meanwhile
        await sweeper.step()
    finally:
        await pool.close()
    assert await _changes(scorer_db, "time") == {"a": 1, "broken": 1, "z": 1}
    assert (await customer_rows(scorer_db))["broken"]["activity_level"] == "semi_active"


async def test_a_rules_migration_sets_a_failing_customer_aside_and_migrates_the_others(
    scorer_db: str, tmp_path: Path
) -> None:
    registry = new_registry()
    new = Scoring(load_rules(candidate(tmp_path)))
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await _bought_at_now(pool, CUSTOMERS)
        sweeper = Sweeper(pool, scoring=lambda: new, clock=FixedClock(NOW), batch=1,
                          metrics=scorer_metrics(registry), retry=RETRY)  # fmt: skip
        with failing_for("broken"):
            busy = [await sweeper.migrate_step() for _ in range(4)]
    finally:
        await pool.close()
    assert busy == [True, True, True, False]  # three customers, one each, then none left
    assert await _changes(scorer_db, "rule_change") == {"a": 1, "z": 1}  # gold -> silver
    versions = {c: row["rules_version"] for c, row in (await customer_rows(scorer_db)).items()}
    assert versions == {"a": new.rules.version, "broken": SCORING.rules.version,
                        "z": new.rules.version}  # fmt: skip
    assert _count(registry, "evaluation_failures", "rule_change") == 1  # not tried again
    assert _count(registry, "sweep_customers", "rule_change") == 2


async def test_catch_ups_cut_short_are_counted_by_the_sweep_and_the_consumer(
    scorer_db: str,
) -> None:
    registry = new_registry()
    metrics = scorer_metrics(registry)
    metrics.start_at_zero([])
    assert _count(registry, "catch_up_cut_short", "event") == 0  # exported before any
    late = NOW + timedelta(days=400)  # many review times later (purchases leaving windows)
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        await _bought_at_now(pool, CUSTOMERS)
        with patch("services.scorer.evaluation.MAX_CATCH_UP_STEPS", 2):
            consumed = await apply_batch(
                pool, [purchase("p-late", "a", days_ago=-400)], [], group_id=SCORER_GROUP,
                scoring=SCORING, now=late,
            )  # fmt: skip
            sweeper = Sweeper(pool, scoring=lambda: SCORING, clock=FixedClock(late), batch=10,
                              metrics=metrics, retry=RETRY)  # fmt: skip
            await sweeper.step()
    finally:
        await pool.close()
    assert consumed.cut_short == 1
    assert _count(registry, "catch_up_cut_short", "time") == 2  # broken and z
