"""Which tier changes are older (by the scorer's seq) than one already applied."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.actions.batch import PlannedChange, newest_seqs, split_stale
from shared.contracts import TierChanged
from shared.domain.playbooks import Plan

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _change(n: int, customer: str, dimension: str, seq: int | None) -> PlannedChange:
    change = TierChanged.model_validate({
        "id": f"c{n}", "customer_id": customer, "dimension": dimension, "from": None,
        "to": "gold" if dimension == "value_tier" else "new", "cause": "event", "rule": "r",
        "features": {}, "rules_version": "v", "emitted_at": T0, "occurred_at": T0,
    })  # fmt: skip
    return PlannedChange(change, Plan([], []), seq=seq)


def test_a_lower_seq_after_a_higher_one_of_the_same_customer_and_dimension_is_stale() -> None:
    changes = [
        _change(1, "a", "value_tier", 10),
        _change(2, "a", "value_tier", 9),  # older: stale
        _change(3, "a", "value_tier", None),  # no seq (an older scorer's): never stale
        _change(4, "a", "value_tier", 11),
        _change(5, "a", "lifecycle_stage", 1),  # another dimension
        _change(6, "b", "value_tier", 1),  # another customer
    ]
    current, stale = split_stale(changes, {})
    assert [c.change.id for c in stale] == ["c2"]
    assert [c.change.id for c in current] == ["c1", "c3", "c4", "c5", "c6"]
    assert [c.change.id for c in split_stale(changes, {("b", "value_tier"): 2})[1]] == ["c2", "c6"]
    # The latest applied, read again after its inbox row was pruned: the same change.
    assert [c.change.id for c in split_stale(changes, {("a", "value_tier"): 11})[1]] == [
        "c1", "c2", "c4",
    ]  # fmt: skip
    assert newest_seqs(changes) == {("a", "value_tier"): 11, ("a", "lifecycle_stage"): 1,
                                    ("b", "value_tier"): 1}  # fmt: skip


keys = st.tuples(st.sampled_from("ab"), st.sampled_from(["value_tier", "lifecycle_stage"]))


@given(st.lists(st.tuples(keys, st.none() | st.integers(1, 6)), max_size=12))
def test_a_change_is_stale_exactly_when_an_earlier_one_of_its_key_had_a_seq_as_high(
    rows: list[tuple[tuple[str, str], int | None]],
) -> None:
    changes = [_change(n, c, d, seq) for n, ((c, d), seq) in enumerate(rows)]
    current, stale = split_stale(changes, {})
    assert len(current) + len(stale) == len(changes)
    for index, planned in enumerate(changes):
        key = (planned.change.customer_id, planned.change.dimension)
        earlier = [p.seq for p in changes[:index] if p.seq is not None
                   and (p.change.customer_id, p.change.dimension) == key]  # fmt: skip
        older = planned.seq is not None and any(planned.seq <= e for e in earlier)
        assert (planned in stale) == older
