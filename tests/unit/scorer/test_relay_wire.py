"""The relay writes each change's wire JSON straight from its row: the same TierChanged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer

from services.scorer.db import Pool
from services.scorer.metrics import scorer_metrics
from services.scorer.relay import TRIMMED_HEADER, OutboxRelay, change_from_row, wire_value
from shared.clock import FixedClock
from shared.contracts import TierChanged
from shared.metrics import new_registry

ROW: dict[str, Any] = {
    "id": "0b4c", "customer_id": "c/1 ü", "dimension": "value_tier", "from_class": None,
    "to_class": "gold", "cause": "event", "rule": "gold rule",
    # As Postgres prints jsonb: spaces, its own key order, numerics as written.
    "features": '{"m_score": 4, "days_since_last_purchase": 12.5, "flag": true, "x": null}',
    "attributes": '{"region": "north", "size": 12345678901234567890123}',
    "rules_version": "abc123", "occurred_at": datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
    "emitted_at": datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC),
}  # fmt: skip


@pytest.mark.parametrize("from_class", [None, "silver"])
def test_the_wire_json_parses_to_the_event_the_row_describes(from_class: str | None) -> None:
    row = {**ROW, "from_class": from_class}
    published = TierChanged.model_validate_json(wire_value(row))  # type: ignore[arg-type]
    assert published == change_from_row(row).to_event()  # type: ignore[arg-type]
    assert published.attributes["size"] == 12345678901234567890123


@pytest.mark.parametrize(
    ("attributes", "features", "dropped"),
    [
        ("x" * 100, "y" * 100, None),
        ("x" * 5000, "y" * 100, b"attributes"),
        ("x" * 100, "y" * 5000, b"attributes,features"),  # a rule read a long text attribute
    ],
)
def test_a_change_over_the_limit_drops_attributes_then_features_to_fit(
    attributes: str, features: str, dropped: bytes | None
) -> None:
    row = {**ROW, "attributes": f'{{"notes": "{attributes}"}}',
           "features": f'{{"notes": "{features}"}}'}  # fmt: skip
    registry = new_registry()
    relay = OutboxRelay(
        cast(Pool, None), cast(AIOKafkaProducer, None), topic="t", batch=1,
        clock=FixedClock(ROW["emitted_at"]), metrics=scorer_metrics(registry),
        max_message_bytes=4096,
    )  # fmt: skip
    headers: list[tuple[str, bytes]] = [("ce_id", b"0b4c")]
    _, value, _ = relay._fitting(row, b"c", headers)  # type: ignore[arg-type]
    published = TierChanged.model_validate_json(value)
    assert dict(headers).get(TRIMMED_HEADER) == dropped
    assert (published.attributes == {}) is (dropped is not None)
    assert (published.features == {}) is (dropped == b"attributes,features")
    assert registry.get_sample_value("tierstream_scorer_trimmed_changes_total") == (
        0 if dropped is None else 1
    )
