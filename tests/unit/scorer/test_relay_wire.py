"""The relay writes each change's wire JSON straight from its row: the same TierChanged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.scorer.relay import change_from_row, wire_value
from shared.contracts import TierChanged

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
