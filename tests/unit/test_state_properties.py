"""Properties of folding: order, arrival time, pruning and JSON never change the features."""

from __future__ import annotations

from datetime import datetime, timedelta
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from shared.domain.features import compute_features
from shared.domain.state import (
    CustomerState,
    Stamped,
    attributes_of,
    fold,
    merge_attribute,
    new_state,
    prune,
    state_from_json,
    state_to_json,
)
from tests.support.histories import MICROS_PER_DAY, NOW, Event, folded, histories


def observe(state: CustomerState, now: datetime = NOW) -> tuple[object, ...]:
    return compute_features(state, now=now), attributes_of(state)


@settings(max_examples=100, deadline=None)
@given(history=histories(), data=st.data())
def test_folding_distinct_events_in_any_order_gives_the_same_features(
    history: list[Event], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(history))
    assert observe(folded(shuffled)) == observe(folded(history))
    assert state_to_json(folded(shuffled)) == state_to_json(folded(history))


@settings(max_examples=100, deadline=None)
@given(history=histories(), data=st.data())
def test_events_arriving_over_time_with_pruning_give_the_same_features_as_a_replay(
    history: list[Event], data: st.DataObject
) -> None:
    offsets = data.draw(
        st.lists(st.integers(0, 400 * MICROS_PER_DAY), min_size=len(history), max_size=len(history))
    )
    arrivals = sorted(NOW - timedelta(microseconds=us) for us in offsets)
    state = new_state("c")
    for event, arrived in zip(data.draw(st.permutations(history)), arrivals, strict=True):
        fold(state, event, now=arrived)
        prune(state, now=arrived)
    assert observe(state) == observe(folded(history))


@settings(max_examples=100, deadline=None)
@given(history=histories(), later_days=st.integers(0, 800))
def test_prune_never_changes_features_now_or_later(history: list[Event], later_days: int) -> None:
    pruned = folded(history)
    prune(pruned, now=NOW)
    later = NOW + timedelta(days=later_days, microseconds=later_days)
    assert observe(pruned) == observe(folded(history))
    assert observe(pruned, later) == observe(folded(history), later)


@settings(max_examples=100, deadline=None)
@given(history=histories())
def test_json_round_trip_preserves_the_state_and_its_features(history: list[Event]) -> None:
    state = folded(history)
    restored = state_from_json(state_to_json(state))
    assert restored == state
    assert observe(restored) == observe(state)


# Numeric attributes too: the hand-written JSON must keep ints, floats and bools apart.
rich_attributes = st.dictionaries(
    st.sampled_from(["region", "size", "score", "b2b"]),
    st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.booleans(), st.none()),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(history=histories(), extra=rich_attributes)
def test_the_hand_written_json_equals_pydantics_dump_and_reads_back_the_same(
    history: list[Event], extra: dict[str, object]
) -> None:
    state = folded(history)
    for name, value in extra.items():
        state.attributes[name] = Stamped(NOW, "e-attr", value)  # type: ignore[arg-type]
    reference = TypeAdapter(CustomerState)
    assert state_to_json(state) == reference.dump_python(state, mode="json")
    assert state_from_json(state_to_json(state)) == reference.validate_python(state_to_json(state))


@settings(max_examples=200, deadline=None)
@given(
    sets=st.lists(
        st.tuples(st.sampled_from("abcdefg"), st.integers(0, 20), st.integers(0, 3)), max_size=40
    ),
    data=st.data(),
)
def test_a_customer_keeps_the_attributes_set_most_recently_in_any_arrival_order(
    sets: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    cap = 3
    stamped = [
        (name, Stamped(NOW + timedelta(days=day), f"e{day}-{n}", n)) for name, day, n in sets
    ]
    latest: dict[str, Stamped] = {}
    for name, value in stamped:
        if name not in latest or value.key() > latest[name].key():
            latest[name] = value
    ranked = sorted(latest.items(), key=lambda item: (item[1].key(), item[0]))
    expected = dict(ranked[-cap:])
    state = new_state("c")
    with patch("shared.domain.state.MAX_ATTRIBUTES", cap):
        for name, value in data.draw(st.permutations(stamped)):
            merge_attribute(state, name, value)
    assert state.attributes == expected
