"""Rule conditions: data (validated by pydantic), evaluated without `eval`.

A condition is one of
  {feature|attribute: X, op: lt|le|gt|ge|eq|ne, value: V}
  {feature|attribute: X, between: [a, b]}          (a <= x <= b)
  {feature|attribute: X, in: [v1, v2, ...]}
  {all: [...]}, {any: [...]}, {not: {...}}, or the string "always".
A comparison with a missing (None) value is false: `ne null` holds for a value, and
`eq null` (or null in `in`), which could never hold, is refused.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.contracts import AttributeKey, refuse_nul
from shared.domain.features import BOOLEAN_FEATURES, FEATURES, FeatureValue

Op = Literal["lt", "le", "gt", "ge", "eq", "ne"]


def _finite(value: object) -> object:
    # YAML's .nan and .inf are floats, and YAML integers have no bound: as thresholds they
    # would fail only later, in the scorer (review times compare them as floats), for every
    # customer they reach. Refused here, not by each branch of the union ("value.bool: Input
    # should be a valid boolean").
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("Input should be a finite number, not NaN or infinity")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        raise ValueError("Input should be a number within about ±1.8e308 (a float's range)")
    return value


def _number(value: object) -> object:
    # Lax, true read as 1 and "1" as 1: `between: [true, 5]` was silently `between: [1, 5]`.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Input should be a number, not {value!r}")
    return _finite(value)


def _text(value: object) -> object:
    # Text as everywhere else (attribute values reach the scorer through ingest's check).
    return refuse_nul(value) if isinstance(value, str) else value


Scalar = Annotated[
    bool | int | float | str | None, BeforeValidator(_finite), BeforeValidator(_text)
]
Number = Annotated[int | float, BeforeValidator(_number)]

OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}
# Tags are stripped from error locations; the prefix keeps them apart from field names.
TAG_PREFIX = "cond:"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Leaf(_Model):
    feature: str | None = None
    attribute: Annotated[AttributeKey, AfterValidator(refuse_nul)] | None = None

    @field_validator("feature")
    @classmethod
    def _known(cls, feature: str | None) -> str | None:
        if feature is not None and feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}")
        return feature

    @model_validator(mode="after")
    def _one_target(self) -> _Leaf:
        if (self.feature is None) == (self.attribute is None):
            raise ValueError("give exactly one of `feature` or `attribute`")
        return self

    def _check_values(self, values: Sequence[object]) -> None:
        """A feature's values are numbers, or true / false: a value of the other kind (a
        quoted "1", `eq 1` on a yes/no feature) never equals it, so the rule would silently
        never hold. Attributes are whatever senders send: not checked."""
        if self.feature is None:
            return
        boolean = self.feature in BOOLEAN_FEATURES
        for value in values:
            if value is None:  # `ne null`: the feature has a value
                continue
            if boolean and not isinstance(value, bool):
                raise ValueError(
                    f"feature {self.feature!r} is true or false; {value!r} never equals it"
                )
            if not boolean and not _is_number(value):
                raise ValueError(f"feature {self.feature!r} is a number; {value!r} is not one")

    def _missing_idiom(self) -> str:
        # A missing value makes every comparison false, `eq null` too; `ne null` holds for a
        # value, so its negation holds for none.
        target = "feature" if self.feature is not None else "attribute"
        name = self.feature if self.feature is not None else self.attribute
        return (
            "a comparison with a missing value is false; for no value, write"
            f" `{{not: {{{target}: {name}, op: ne, value: null}}}}`"
        )

    def key(self) -> str:
        """The name this leaf reads, as it appears in a Classification's `read` values."""
        return self.feature if self.feature is not None else f"attributes.{self.attribute}"

    def lookup(self, features: Mapping[str, FeatureValue], attributes: Mapping[str, Any]) -> Any:
        if self.feature is not None:
            return features.get(self.feature)
        return attributes.get(self.attribute or "")


class Compare(_Leaf):
    op: Op
    value: Scalar

    @field_validator("value")
    @classmethod
    def _orderable(cls, value: Scalar, info: ValidationInfo) -> Scalar:
        op = info.data.get("op")
        if op in ("lt", "le", "gt", "ge") and not _is_number(value):
            raise ValueError(f"operator {op!r} needs a number as `value`")
        return value

    @model_validator(mode="after")
    def _typed(self) -> Compare:
        if self.op == "eq" and self.value is None:
            raise ValueError(f"`eq null` never holds: {self._missing_idiom()}")
        self._check_values([self.value])
        return self


class Between(_Leaf):
    between: tuple[Number, Number]

    @model_validator(mode="after")
    def _ordered(self) -> Between:
        if self.between[0] > self.between[1]:
            raise ValueError("`between` needs [low, high] with low <= high")
        self._check_values(self.between)
        return self


class Member(_Leaf):
    in_: Annotated[list[Scalar], Field(alias="in", min_length=1)]

    @model_validator(mode="after")
    def _typed(self) -> Member:
        if None in self.in_:
            raise ValueError(f"null in `in` never matches: {self._missing_idiom()}")
        self._check_values(self.in_)
        return self


class All(_Model):
    all: Annotated[list[Condition], Field(min_length=1)]


class AnyOf(_Model):
    any: Annotated[list[Condition], Field(min_length=1)]


class Not(_Model):
    not_: Condition = Field(alias="not")


Always = Literal["always"]
_KEYS = {
    "op": "compare",
    "between": "between",
    "in": "in",
    "all": "all",
    "any": "any",
    "not": "not",
}


def _condition_kind(raw: Any) -> str | None:
    if isinstance(raw, BaseModel):
        # By type: dumping the model to read its keys dumped its whole subtree at every level
        # of nesting, four times the time per level (depth 20 took 7 s, 50 did not end).
        return next((TAG_PREFIX + kind for model, kind in _MODEL_KINDS if isinstance(raw, model)),
                    None)  # fmt: skip
    if isinstance(raw, str):
        return TAG_PREFIX + "always"
    if isinstance(raw, dict):
        kinds = [kind for key, kind in _KEYS.items() if key in raw]
        if len(kinds) == 1:
            return TAG_PREFIX + kinds[0]
    return None


_MODEL_KINDS: tuple[tuple[type[BaseModel], str], ...] = (
    (Compare, "compare"), (Between, "between"), (Member, "in"), (All, "all"), (AnyOf, "any"),
    (Not, "not"),
)  # fmt: skip

Condition = Annotated[
    Annotated[Compare, Tag(TAG_PREFIX + "compare")]
    | Annotated[Between, Tag(TAG_PREFIX + "between")]
    | Annotated[Member, Tag(TAG_PREFIX + "in")]
    | Annotated[All, Tag(TAG_PREFIX + "all")]
    | Annotated[AnyOf, Tag(TAG_PREFIX + "any")]
    | Annotated[Not, Tag(TAG_PREFIX + "not")]
    | Annotated[Always, Tag(TAG_PREFIX + "always")],
    Discriminator(
        _condition_kind,
        custom_error_type="invalid_condition",
        custom_error_message=(
            "a condition needs exactly one of `op`+`value`, `between`, `in`, `all`, `any`,"
            " `not`, or is the word `always`"
        ),
    ),
]
for _model in (All, AnyOf, Not):
    _model.model_rebuild()


def evaluate(
    condition: Condition, features: Mapping[str, FeatureValue], attributes: Mapping[str, Any]
) -> bool:
    """Whether the condition holds for these feature and attribute values."""
    match condition:
        case "always":
            return True
        case All(all=parts):
            return all(evaluate(p, features, attributes) for p in parts)
        case AnyOf(any=parts):
            return any(evaluate(p, features, attributes) for p in parts)
        case Not(not_=inner):
            return not evaluate(inner, features, attributes)
        case _Leaf():
            return _evaluate_leaf(condition, condition.lookup(features, attributes))
    raise TypeError(f"not a condition: {condition!r}")


def _evaluate_leaf(leaf: _Leaf, actual: Any) -> bool:
    if actual is None:
        return False
    try:
        match leaf:
            case Compare(op=op, value=value):
                return OPERATORS[op](actual, align(actual, value))
            case Between(between=(low, high)):
                return bool(align(actual, low) <= actual <= align(actual, high))
            case Member(in_=options):
                return any(actual == align(actual, option) for option in options)
    except TypeError:
        # e.g. a string attribute compared with a number: the comparison is simply false.
        return False
    return False


def align(actual: Any, threshold: Any) -> Any:
    """Compare like with like: a YAML float against a Decimal amount is read as decimal."""
    if isinstance(actual, Decimal) and isinstance(threshold, float):
        return Decimal(repr(threshold))
    if isinstance(actual, bool) != isinstance(threshold, bool):
        # Python's True == 1 must not make `lifetime_orders eq true` hold; a sentinel never equals.
        return _NEVER_EQUAL
    return threshold


class _NeverEqual:
    """Equal to nothing; ordering comparisons with it raise TypeError (read as false)."""

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]


_NEVER_EQUAL = _NeverEqual()


def always_holds(condition: Condition) -> bool:
    """Whether the condition holds whatever the values, by its form (`{any: [always, ...]}`);
    a leaf may hold for every value it meets, but that is not looked into."""
    match condition:
        case "always":
            return True
        case All(all=parts):
            return all(always_holds(p) for p in parts)
        case AnyOf(any=parts):
            return any(always_holds(p) for p in parts)
        case Not(not_=inner):
            return never_holds(inner)
    return False


def never_holds(condition: Condition) -> bool:
    """Whether the condition holds for no values, by its form (`{not: always}`)."""
    match condition:
        case All(all=parts):
            return any(never_holds(p) for p in parts)
        case AnyOf(any=parts):
            return all(never_holds(p) for p in parts)
        case Not(not_=inner):
            return always_holds(inner)
    return False


def leaves(condition: Condition) -> Iterator[_Leaf]:
    """Every leaf comparison in the condition, depth first."""
    match condition:
        case All(all=parts) | AnyOf(any=parts):
            for part in parts:
                yield from leaves(part)
        case Not(not_=inner):
            yield from leaves(inner)
        case _Leaf():
            yield condition


# Where a comparison `x op v` can flip as x grows: on reaching v (x >= v) or passing it (x > v).
Boundary = tuple[float, Literal["reach", "pass"]]
OP_BOUNDARIES: dict[str, tuple[Literal["reach", "pass"], ...]] = {
    "lt": ("reach",),
    "ge": ("reach",),
    "le": ("pass",),
    "gt": ("pass",),
    "eq": ("reach", "pass"),
    "ne": ("reach", "pass"),
}


def boundaries(leaf: _Leaf) -> list[Boundary]:
    """The values at which this leaf may flip as its (growing) feature crosses them."""
    match leaf:
        case Compare(op=op, value=value) if _is_number(value):
            return [(float(value), kind) for kind in OP_BOUNDARIES[op]]  # type: ignore[arg-type]
        case Between(between=(low, high)):
            return [(float(low), "reach"), (float(high), "pass")]
        case Member(in_=options):
            return [(float(v), k) for v in options if _is_number(v) for k in ("reach", "pass")]  # type: ignore[arg-type]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
