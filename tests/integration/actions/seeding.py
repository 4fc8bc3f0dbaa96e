"""Seed the actions tables the way the consumer does (real planning, real Postgres), no Kafka."""

from __future__ import annotations

from datetime import datetime

from services.actions.batch import BatchResult, GoalHit, PlannedChange, apply_batch
from services.actions.db import Pool
from services.actions.effects import ChannelConfig
from shared.contracts import TierChanged
from shared.domain.playbooks import Playbooks, default_playbooks_path, load_playbooks, plan_actions

LOG_ONLY = ChannelConfig(webhook=False, email=False, crm=False)


async def apply_changes(
    pool: Pool, changes: list[TierChanged], *, now: datetime,
    channels: ChannelConfig = LOG_ONLY, seqs: list[int] | None = None,
    playbooks: Playbooks | None = None,
) -> BatchResult:  # fmt: skip
    """Plan the changes with `playbooks` (default: the default playbooks) and write their
    effects in one transaction (`seqs`: the scorer's seq of each, as its header carries it;
    default none)."""
    books = playbooks or load_playbooks(default_playbooks_path())
    numbers: list[int | None] = list(seqs) if seqs is not None else [None] * len(changes)
    planned = [
        PlannedChange(c, plan_actions(c, books), seq=n)
        for c, n in zip(changes, numbers, strict=True)
    ]
    return await apply_batch(pool, planned, [], [], group_id="seed", playbooks=books,
                             channels=channels, now=now)  # fmt: skip


async def apply_goals(pool: Pool, goals: list[GoalHit], *, now: datetime) -> BatchResult:
    """Record goal events (consumed purchases) in one transaction, as the consumer does."""
    books = load_playbooks(default_playbooks_path())
    return await apply_batch(pool, [], goals, [], group_id="seed", playbooks=books,
                             channels=LOG_ONLY, now=now)  # fmt: skip
