"""The hot-path JSON codec writes exactly the state JSON the domain defines, integers exact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scorer import codec
from shared.contracts import CustomerLoggedIn, PurchaseMade
from shared.domain.state import (
    Stamped,
    fold,
    new_state,
    state_from_json,
    state_to_json,
    state_to_record,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
attribute_values = st.one_of(
    st.text(max_size=4),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@settings(max_examples=100, deadline=None)
@given(
    ages=st.lists(st.integers(-(10**6), 400 * 86_400 * 10**6), max_size=12),
    attributes=st.dictionaries(st.sampled_from(["a", "b", "c"]), attribute_values),
)
def test_the_fast_text_of_a_state_reads_back_as_its_json_and_its_state(
    ages: list[int], attributes: dict[str, object]
) -> None:
    state = new_state("c")
    for i, us in enumerate(ages):
        at = NOW - timedelta(microseconds=us)
        event = (
            PurchaseMade(event_id=f"p{i}", customer_id="c", occurred_at=at, order_id="o",
                         amount=Decimal(i) / 8 if i % 2 else Decimal("1E+3"), currency="EUR")
            if i % 3 else CustomerLoggedIn(event_id=f"l{i}", customer_id="c", occurred_at=at,
                                          channel="web")
        )  # fmt: skip
        fold(state, event, now=NOW)
    for name, value in attributes.items():
        state.attributes[name] = Stamped(NOW, "e", value)  # type: ignore[arg-type]
    text = codec.dumps(state_to_record(state))
    assert codec.dumps_state(state) == text  # the fast path writes the very same text
    assert json.loads(text) == state_to_json(state)
    loaded = codec.loads(text, user_values=codec.state_attributes)
    assert loaded == state_to_json(state)
    assert state_from_json(loaded) == state


def test_an_integer_beyond_64_bits_survives_both_ways() -> None:
    big = 2**70 + 1
    text = codec.dumps({"attributes": {"n": {"value": big}}, "at": NOW})
    assert text == f'{{"attributes":{{"n":{{"value":{big}}}}},"at":"2026-03-01T00:00:00Z"}}'
    assert codec.loads(text, user_values=codec.state_attributes)["attributes"]["n"]["value"] == big
