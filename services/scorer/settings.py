"""Scorer settings: env prefix `SCORER_`, plus the shared variables of `ServiceSettings`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.settings import ConsumingServiceSettings, default_rules_file
from shared.topics import SCORER_GROUP


class ScorerSettings(ConsumingServiceSettings):
    """Everything the scorer reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="SCORER_", frozen=True, populate_by_name=True, extra="ignore"
    )

    port: int = Field(8081, ge=1, le=65535, description="Port of the HTTP API.")
    api_keys: Annotated[SecretStr, NoDecode] = Field(
        SecretStr(""),
        validation_alias=AliasChoices("SCORER_API_KEYS", "TIERSTREAM_API_KEYS"),
        description="Comma-separated `key` or `source:key` entries.",
    )
    group_id: str = Field(
        SCORER_GROUP, min_length=1,
        description="Consumer group of the scorer processes; stored offsets are kept per group. "
        "Only two scorer deployments that must not share work (on one broker) need another.",
    )  # fmt: skip
    rules_file: Path = Field(
        default_factory=default_rules_file,
        description="YAML rules file; validated at start (the scorer refuses an invalid one).",
    )
    # The description's figures: docs/performance-log.md, twelfth pass (three interleaved
    # drains a side); live batches are far smaller than either size.
    batch_max_records: int = Field(
        20000,
        ge=1,
        description="Most records per consumed batch (one transaction). Larger catches up "
        "faster after downtime (each customer is evaluated once per batch) for more memory "
        "and longer row locks: 50,000 drained 7-11 % faster with about 45 % more RSS.",
    )
    # 5 ms, not more: while a batch runs the next one's records pile up in the fetch buffer
    # anyway, so a longer linger mostly adds its own length to the latency (e2e p99 at
    # 5,000/s 132-201 ms with 20 ms against 106-139 ms with 5 ms, docs/performance-log.md).
    batch_linger_ms: int = Field(
        5,
        ge=0,
        description="How long a batch keeps gathering records after the first one (a batch "
        "that is behind keeps filling up to its size, for up to SCORER_POLL_TIMEOUT_MS).",
    )
    batch_lanes: int = Field(
        2, ge=1, le=8, description="Concurrent transactions a batch is split into (by partition)."
    )
    poll_timeout_ms: int = Field(
        500, ge=10, description="Longest wait for a batch, and for a batch that is behind to fill."
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, description="How often the sweeper re-evaluates customers that came due."
    )
    sweep_batch: int = Field(1000, ge=1, description="Customers re-evaluated per sweep tx.")
    sweep_retry_s: float = Field(
        900.0,
        gt=0,
        le=366 * 86400,
        description="How long a customer whose time re-evaluation raised waits before the"
        " sweeper tries it again (the error is logged and counted in"
        " tierstream_scorer_evaluation_failures_total; the other due customers go on)."
        " Meanwhile it keeps its classes, and its new events still re-evaluate it.",
    )
    sweep_max_lag: int = Field(
        1000,
        ge=0,
        description="Time sweeps hold the customers of a partition while its consumer, in "
        "any process, is more than this many records behind (or has not reported since the "
        "last rebalance): a downgrade decided before a customer's unread events would be "
        "emitted, acted on, then undone by them.",
    )
    relay_batch: int = Field(5000, ge=1, description="Outbox rows published per relay round.")
    relay_interval_s: float = Field(
        0.5, gt=0,
        description="Relay poll interval when idle. A batch's changes are published by the "
        "consumer right after it commits; the relay loop takes the sweeper's, re-bucketing's "
        "and any whose publish failed.",
    )  # fmt: skip
    population_interval_s: float = Field(
        3600.0, gt=0, description="How often population-mode cut points are recomputed."
    )
    cut_points_poll_s: float = Field(
        5.0,
        gt=0,
        description="Population mode: how often a process adopts cut points another process "
        "of the group stored (so all score alike within this long after a recompute).",
    )
    gauge_interval_s: float = Field(15.0, gt=0, description="Refresh of the customers gauge.")
    state_cache_size: int = Field(
        50000, ge=0,
        description="Customers whose decoded state the consumer keeps in memory between "
        "batches (checked against the row's version; 0 turns the cache off).",
    )  # fmt: skip
