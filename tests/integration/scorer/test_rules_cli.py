"""`rules check` / `rules diff` helpers, and the scorer refusing an invalid rules file."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from services.scorer import store
from services.scorer.batch import apply_batch
from services.scorer.db import Pool, create_pool
from services.scorer.evaluation import Scoring
from services.scorer.main import run
from services.scorer.metrics import scorer_metrics
from services.scorer.rebucket import population_cut_points
from services.scorer.rules_cli import check_rules, diff_rules
from services.scorer.settings import ScorerSettings
from services.scorer.sweeper import Sweeper
from shared.clock import FixedClock
from shared.contracts import Dimension
from shared.domain.changes import migration_matrix
from shared.domain.features import compute_features
from shared.domain.rules import RulesError, classify, default_rules_path, load_rules
from shared.domain.state import attributes_of, state_from_json
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


def test_check_names_the_version_of_a_valid_file_and_the_field_of_an_invalid_one(
    tmp_path: Path,
) -> None:
    assert "valid, version" in check_rules(default_rules_path())
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        candidate(tmp_path)
        .read_text()
        .replace("m_score, op: ge, value: 5", "m_scor, op: ge, value: 5")
    )
    with pytest.raises(RulesError, match=r"bad\.yaml.*m_scor"):
        check_rules(bad)


async def test_diff_shows_who_would_move_and_changes_nothing(
    base_env: dict[str, str], scorer_db: str, tmp_path: Path
) -> None:
    pool = await create_pool(scorer_db, size=2, application_name="test")
    events = [
        purchase(f"g{c}-{i}", f"gold-{c}", days_ago=i * 5, amount="600")
        for c in range(3)
        for i in range(10)
    ]
    events += [purchase(f"m{i}", "max", days_ago=i, amount="1100") for i in range(10)]
    scoring = Scoring(load_rules(default_rules_path()))
    await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=scoring, now=NOW)
    await pool.close()
    before = await customer_rows(scorer_db)
    settings = ScorerSettings.model_validate({**base_env, "TIERSTREAM_NOW": NOW.isoformat()})
    told: list[tuple[int, int]] = []
    matrices = await diff_rules(settings, candidate(tmp_path), lambda *p: told.append(p))
    assert told == [(4, 4)]  # the progress bar's: done, of all (every 1,000 and at the end)
    assert matrices[Dimension.VALUE_TIER] == {"gold": {"gold": 1, "silver": 3}}
    assert matrices[Dimension.LIFECYCLE_STAGE] == {"established": {"established": 4}}
    assert await customer_rows(scorer_db) == before

    # With hysteresis, the scorer would hold the downgrades of customers gold since NOW:
    # the diff says what the switch would do, not what the rules alone say.
    held = tmp_path / "held.yaml"
    held.write_text(candidate(tmp_path).read_text().replace(
        "\nhysteresis: {}\n", "\nhysteresis:\n  value_tier: {min_dwell_days: 30}\n"
    ))  # fmt: skip
    matrices = await diff_rules(settings, held)
    assert matrices[Dimension.VALUE_TIER] == {"gold": {"gold": 4}}
    later = settings.model_copy(update={"now": NOW + timedelta(days=31)})
    assert (await diff_rules(later, held))[Dimension.VALUE_TIER]["gold"].get("silver", 0) == 3


async def test_diff_of_a_population_candidate_uses_its_own_quintiles(
    base_env: dict[str, str], scorer_db: str, tmp_path: Path
) -> None:
    # Five customers with spend 100..500: under population mode their M scores spread 1..5,
    # whatever cut points (none, here: the current rules use thresholds) are stored.
    pool = await create_pool(scorer_db, size=2, application_name="test")
    events = [purchase(f"p{i}", f"c{i}", days_ago=3, amount=str(100 * i)) for i in range(1, 6)]
    scoring = Scoring(load_rules(default_rules_path()))
    await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=scoring, now=NOW)
    await pool.close()
    text = default_rules_path().read_text()
    assert "  mode: thresholds" in text
    population = tmp_path / "population.yaml"
    population.write_text(text.replace("  mode: thresholds", "  mode: population", 1))
    settings = ScorerSettings.model_validate({**base_env, "TIERSTREAM_NOW": NOW.isoformat()})
    rules = load_rules(population)
    async with connect(scorer_db) as conn, conn.transaction():
        cuts = await population_cut_points(conn, rules, now=NOW)
    states = await customer_rows(scorer_db)
    moves: list[tuple[str | None, str]] = []
    for row in states.values():
        raw = row["state"]
        state = state_from_json(json.loads(raw) if isinstance(raw, str) else raw)
        features = compute_features(state, now=NOW)
        to = classify(features, attributes_of(state), rules, cut_points=cuts).classes()
        moves.append((row["value_tier"], to[Dimension.VALUE_TIER]))
    assert len(states) == 5
    matrices = await diff_rules(settings, population)
    assert matrices[Dimension.VALUE_TIER] == migration_matrix(moves)
    assert (
        cuts.monetary
        and matrices[Dimension.VALUE_TIER]
        != (await diff_rules(settings, default_rules_path()))[Dimension.VALUE_TIER]
    )


async def test_the_scorer_refuses_to_start_with_an_invalid_rules_file(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("scores: {}\n")
    settings = ScorerSettings.model_validate({**base_env, "rules_file": bad})
    with pytest.raises(SystemExit, match=r"rules\.yaml"):
        await run(settings)


async def _gold_under_old_rules(pool: Pool, tmp_path: Path) -> tuple[Scoring, Scoring]:
    """Customer `gold` classified under the default rules; those and the candidate's."""
    events = [purchase(f"g{i}", "gold", days_ago=i * 5, amount="600") for i in range(10)]
    old = Scoring(load_rules(default_rules_path()))
    await apply_batch(pool, events, [], group_id=SCORER_GROUP, scoring=old, now=NOW)
    return old, Scoring(load_rules(candidate(tmp_path)))


async def test_a_new_rules_file_reclassifies_stored_customers_with_cause_rule_change(
    scorer_db: str, tmp_path: Path
) -> None:
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        _, new = await _gold_under_old_rules(pool, tmp_path)
        sweeper = Sweeper(pool, scoring=lambda: new, clock=FixedClock(NOW), batch=10,
                          metrics=scorer_metrics(new_registry()), retry=RETRY)  # fmt: skip
        assert await sweeper.migrate_step() is False  # one customer: done in one step
        assert await sweeper.migrate_step() is False
    finally:
        await pool.close()
    async with connect(scorer_db) as conn:
        rows = await conn.fetch("SELECT * FROM scorer.tier_change WHERE cause = 'rule_change'")
    assert [(r["dimension"], r["from_class"], r["to_class"]) for r in rows] == [
        ("value_tier", "gold", "silver")
    ]
    stored = (await customer_rows(scorer_db))["gold"]
    assert (stored["value_tier"], stored["rules_version"]) == ("silver", new.rules.version)


async def test_a_process_with_superseded_rules_leaves_time_sweeps_to_the_newer_one(
    scorer_db: str, tmp_path: Path
) -> None:
    pool = await create_pool(scorer_db, size=2, application_name="test")
    later = FixedClock(NOW + timedelta(days=400))  # every review time has passed
    try:
        old, new = await _gold_under_old_rules(pool, tmp_path)
        async with pool.acquire() as conn:
            await store.activate_rules(conn, old.rules.version)
            await store.activate_rules(conn, new.rules.version)

        def sweeper(scoring: Scoring) -> Sweeper:
            return Sweeper(pool, scoring=lambda: scoring, clock=later, batch=10,
                           metrics=scorer_metrics(new_registry()), retry=RETRY)  # fmt: skip

        assert await sweeper(old).step() is False
        async with connect(scorer_db) as db:
            assert await db.fetchval("SELECT count(*) FROM scorer.tier_change") == 3
        stored = (await customer_rows(scorer_db))["gold"]
        assert stored["rules_version"] == old.rules.version  # not swept under the old rules
        await sweeper(new).step()
        stored = (await customer_rows(scorer_db))["gold"]
        assert stored["rules_version"] == new.rules.version
    finally:
        await pool.close()


async def test_during_a_rolling_deploy_only_the_newest_rules_reclassify(
    scorer_db: str, tmp_path: Path
) -> None:
    pool = await create_pool(scorer_db, size=2, application_name="test")
    try:
        old, new = await _gold_under_old_rules(pool, tmp_path)
        async with pool.acquire() as conn:
            await store.activate_rules(conn, old.rules.version)  # the running processes
            await store.activate_rules(conn, new.rules.version)  # the first one of the deploy

        registry = new_registry()
        metrics = scorer_metrics(registry)

        def sweeper(scoring: Scoring) -> Sweeper:
            return Sweeper(pool, scoring=lambda: scoring, clock=FixedClock(NOW), batch=10,
                           metrics=metrics, retry=RETRY)  # fmt: skip

        def superseded() -> float | None:
            return registry.get_sample_value("tierstream_scorer_rules_superseded")

        assert await sweeper(new).migrate_step() is False  # moved forward: silver
        assert (await customer_rows(scorer_db))["gold"]["value_tier"] == "silver"
        assert superseded() == 0
        assert await sweeper(old).migrate_step() is False  # superseded: leaves it
        assert superseded() == 1  # said where an operator looks, not in one log line only
        stored = (await customer_rows(scorer_db))["gold"]
        assert (stored["value_tier"], stored["rules_version"]) == ("silver", new.rules.version)
        async with pool.acquire() as conn:
            await store.activate_rules(conn, old.rules.version)  # a rollback
        await sweeper(old).migrate_step()
        assert (await customer_rows(scorer_db))["gold"]["value_tier"] == "gold"
        assert superseded() == 0
    finally:
        await pool.close()
