"""`tierstream rules check|diff`: validate a rules file; try it on today's customers.

`diff` classifies every stored customer with a candidate file at the scorer's now, in a
read-only transaction, and returns the migration matrix per dimension: it changes nothing.
It decides as the scorer would after the switch: downgrades the candidate's hysteresis holds
stay where they are, and in population mode the quintiles are the candidate's own, computed
from the same snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
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


Progress = Callable[[int, int], None]  # (customers done, customers in all)


async def diff_rules(
    settings: ScorerSettings, path: str | Path, progress: Progress | None = None
) -> dict[Dimension, Matrix]:
    """From-class -> to-class counts per dimension if `path` replaced the current rules;
    `progress(done, total)` is told the customers classified so far, every 1,000."""
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
            total: int = await conn.fetchval(
                "SELECT count(*) FROM scorer.customer WHERE state IS NOT NULL"
            )
            rows = conn.cursor(
                f"SELECT {store.CUSTOMER_COLUMNS} FROM scorer.customer WHERE state IS NOT NULL",
                prefetch=1000,
            )
            told = (lambda done: progress(done, total)) if progress else None
            pairs = await _moves(rows, candidate, now, cut_points, told)
    finally:
        await conn.close()
    return {d: migration_matrix(pairs[d]) for d in Dimension}


async def _moves(
    rows: AsyncIterable[asyncpg.Record], rules: Rules, now: datetime, cuts: CutPoints | None,
    told: Callable[[int], None] | None,
) -> dict[Dimension, list[tuple[str | None, str]]]:  # fmt: skip
    pairs: dict[Dimension, list[tuple[str | None, str]]] = {d: [] for d in Dimension}
    done = 0
    async for row in rows:
        done += 1
        if told is not None and done % 1000 == 0:
            told(done)
        record = store.customer_record(row)
        state = record.state
        prune(state, now=now)
        features = compute_features(state, now=now)
        classification = classify(features, attributes_of(state), rules, cut_points=cuts)
        decided = decide(record.classes, record.class_since, classification, rules, now=now)
        for dimension, to in decided.classes.items():
            pairs[dimension].append((row[dimension.value], to))
    if told is not None:
        told(done)
    return pairs
