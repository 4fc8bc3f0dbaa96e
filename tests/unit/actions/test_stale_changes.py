"""Which tier changes are older than one already applied for their customer and dimension."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.actions.batch import PlannedChange, newest_times, split_stale
from shared.contracts import TierChanged
from shared.domain.playbooks import Plan

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _change(n: int, customer: str, dimension: str, emitted: int, occurred: int) -> PlannedChange:
    change = TierChanged.model_validate({
        "id": f"c{n}", "customer_id": customer, "dimension": dimension, "from": None,
        "to": "gold" if dimension == "value_tier" else "new", "cause": "event", "rule": "r",
        "features": {}, "rules_version": "v", "emitted_at": T0 + timedelta(minutes=emitted),
        "occurred_at": T0 + timedelta(minutes=occurred),
    })  # fmt: skip
    return PlannedChange(change, Plan([], []))


def test_emitted_at_orders_changes_and_occurred_at_breaks_a_tie() -> None:
    changes = [
        _change(1, "a", "value_tier", 10, 5),
        _change(2, "a", "value_tier", 9, 50),  # decided earlier: stale, though it occurred later
        _change(3, "a", "value_tier", 10, 4),  # same evaluation, earlier event: stale
        _change(4, "a", "value_tier", 10, 5),  # equal: not older
        _change(5, "a", "lifecycle_stage", 1, 1),  # another dimension
        _change(6, "b", "value_tier", 1, 1),  # another customer
    ]
    current, stale = split_stale(changes, {})
    assert [c.change.id for c in stale] == ["c2", "c3"]
    assert [c.change.id for c in current] == ["c1", "c4", "c5", "c6"]
    before = {("b", "value_tier"): (T0 + timedelta(minutes=2), T0)}
    assert [c.change.id for c in split_stale(changes, before)[1]] == ["c2", "c3", "c6"]


keys = st.tuples(st.sampled_from("ab"), st.sampled_from(["value_tier", "lifecycle_stage"]))
times = st.tuples(st.integers(0, 5), st.integers(0, 5))


@given(st.lists(st.tuples(keys, times), max_size=12))
def test_the_changes_acted_on_are_never_older_than_any_before_them(
    rows: list[tuple[tuple[str, str], tuple[int, int]]],
) -> None:
    changes = [_change(n, c, d, e, o) for n, ((c, d), (e, o)) in enumerate(rows)]
    current, stale = split_stale(changes, {})
    assert len(current) + len(stale) == len(changes)
    for index, planned in enumerate(changes):
        key = (planned.change.customer_id, planned.change.dimension)
        at = (planned.change.emitted_at, planned.change.occurred_at)
        earlier = [
            (p.change.emitted_at, p.change.occurred_at)
            for p in changes[:index]
            if (p.change.customer_id, p.change.dimension) == key
        ]
        assert (planned in stale) == any(at < e for e in earlier)
    newest = newest_times(changes)
    for planned in current:
        newest_key = (planned.change.customer_id, planned.change.dimension.value)
        assert (planned.change.emitted_at, planned.change.occurred_at) <= newest[newest_key]
