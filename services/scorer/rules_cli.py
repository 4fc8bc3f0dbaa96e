"""`tierstream rules check|diff`: validate a rules file; try it on today's customers.

`diff` classifies every stored customer with a candidate file at the scorer's now, in a
read-only transaction, and returns the migration matrix per dimension: it changes nothing.
It decides as the scorer would after the switch: downgrades the candidate's hysteresis holds
stay where they are, and in population mode the quintiles are the candidate's own, computed
from the same snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from datetime import datetime
from pathlib import Path

import asyncpg

from services.scorer import store
from services.scorer.rebucket import population_cut_points
from services.scorer.settings import ScorerSettings
from shared.clock import clock_for
from shared.contracts import Dimension
from shared.db import asyncpg_dsn
from shared.domain.changes import decide, migration_matrix
from shared.domain.features import compute_features
from shared.domain.population import CutPoints
from shared.domain.rules import Rules, classify, load_rules
from shared.domain.state import attributes_of, prune

Matrix = dict[str, dict[str, int]]


def check_rules(path: str | Path) -> str:
    """Validate a rules file; a summary line when valid (raises RulesError otherwise)."""
    rules = load_rules(path)
    counts = ", ".join(f"{d.value}: {len(rules.dimension(d).rules)} rules" for d in Dimension)
    return f"{path}: valid, version {rules.version} (scores: {rules.scores.mode}; {counts})"


async def diff_rules(settings: ScorerSettings, path: str | Path) -> dict[Dimension, Matrix]:
    """From-class -> to-class counts per dimension if `path` replaced the current rules."""
    candidate = load_rules(path)
    now = clock_for(settings.now).now()
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        # One snapshot for both passes (the quintiles, then the customers).
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            cut_points = (
                await population_cut_points(conn, candidate, now=now)
                if candidate.scores.mode == "population"
                else None
            )
            rows = conn.cursor(
                f"SELECT {store.CUSTOMER_COLUMNS} FROM scorer.customer WHERE state IS NOT NULL",
                prefetch=1000,
            )
            pairs = await _moves(rows, candidate, now, cut_points)
    finally:
        await conn.close()
    return {d: migration_matrix(pairs[d]) for d in Dimension}


async def _moves(
    rows: AsyncIterable[asyncpg.Record], rules: Rules, now: datetime, cuts: CutPoints | None
) -> dict[Dimension, list[tuple[str | None, str]]]:
    pairs: dict[Dimension, list[tuple[str | None, str]]] = {d: [] for d in Dimension}
    async for row in rows:
        record = store.customer_record(row)
        state = record.state
        prune(state, now=now)
        features = compute_features(state, now=now)
        classification = classify(features, attributes_of(state), rules, cut_points=cuts)
        decided = decide(record.classes, record.class_since, classification, rules, now=now)
        for dimension, to in decided.classes.items():
            pairs[dimension].append((row[dimension.value], to))
    return pairs
