"""Compiled conditions decide exactly as the interpreted `conditions.evaluate` does."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from shared.domain.compiled import compile_condition
from shared.domain.conditions import Condition, evaluate

NAMES = ["lifetime_spend", "logins_30d", "latest_nps"]
numbers = st.one_of(
    st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from([0.1, 2.5, 1e3])
)
thresholds = st.one_of(numbers, st.booleans(), st.sampled_from(["a", "b"]), st.none())
actuals = st.one_of(
    numbers,
    st.decimals(-5, 5, places=2, allow_nan=False, allow_infinity=False),
    st.just(Decimal("0.1")),
    st.booleans(),
    st.sampled_from(["a", "b"]),
    st.none(),
)
target = st.one_of(
    st.fixed_dictionaries({"feature": st.sampled_from(NAMES)}),
    st.fixed_dictionaries({"attribute": st.sampled_from(["region", "size"])}),
)


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["compare", "between", "in"]))
    where = draw(target)
    if kind == "compare":
        op = draw(st.sampled_from(["lt", "le", "gt", "ge", "eq", "ne"]))
        value = draw(numbers if op in ("lt", "le", "gt", "ge") else thresholds)
        return {**where, "op": op, "value": value}
    if kind == "between":
        low, high = sorted([draw(numbers), draw(numbers)])
        return {**where, "between": [low, high]}
    return {**where, "in": draw(st.lists(thresholds, min_size=1, max_size=3))}


conditions = st.recursive(
    st.one_of(leaves(), st.just("always")),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"all": st.lists(inner, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"any": st.lists(inner, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"not": inner}),
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(
    raw=conditions,
    features=st.fixed_dictionaries({name: actuals for name in NAMES}),
    attributes=st.fixed_dictionaries({"region": actuals, "size": actuals}),
)
def test_a_compiled_condition_agrees_with_the_interpreter(
    raw: Any, features: dict[str, Any], attributes: dict[str, Any]
) -> None:
    condition: Condition = TypeAdapter(Condition).validate_python(raw)
    expected = evaluate(condition, features, attributes)
    assert compile_condition(condition)(features, attributes) == expected
