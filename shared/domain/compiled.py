"""Rules compiled once for the hot path: conditions as closures, lookups resolved ahead.

`compile_condition(c)(features, attributes)` returns exactly what
`conditions.evaluate(c, features, attributes)` returns; it only skips the per-call
pattern matching. `compiled_rules(rules)` is cached per rules object, so a scorer
compiles its rules once, not once per customer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.contracts import Dimension
from shared.domain.conditions import (
    _NEVER_EQUAL,
    OPERATORS,
    All,
    AnyOf,
    Between,
    Compare,
    Condition,
    Member,
    Not,
    _Leaf,
    leaves,
)
from shared.domain.features import SCORE_FEATURES, FeaturePlan, FeatureValue, feature_plan
from shared.domain.rules_model import Rule, Rules, ScoreRules

Values = Mapping[str, FeatureValue]
Attributes = Mapping[str, Any]
Check = Callable[[Values, Attributes], bool]
Aligner = Callable[[Any], Any]
# Exact types for which `align` is the identity when both sides have one of them.
PLAIN_NUMBERS = frozenset((int, float))
# Compiled forms of the few rules objects a process uses at a time (keyed by identity).
_CACHE_SIZE = 8


def compile_condition(condition: Condition) -> Check:
    """A closure equivalent to `conditions.evaluate(condition, ...)`."""
    match condition:
        case "always":
            return _always
        case All(all=parts):
            return _all(tuple(compile_condition(p) for p in parts))
        case AnyOf(any=parts):
            return _any(tuple(compile_condition(p) for p in parts))
        case Not(not_=inner):
            check = compile_condition(inner)
            return lambda values, attributes: not check(values, attributes)
        case Compare() | Between() | Member():
            return _leaf(condition)
    raise TypeError(f"not a condition: {condition!r}")


def _always(values: Values, attributes: Attributes) -> bool:
    return True


def _all(checks: tuple[Check, ...]) -> Check:
    def check(values: Values, attributes: Attributes) -> bool:
        # A plain loop: all() over a generator costs a frame per customer on the hot path.
        for part in checks:  # noqa: SIM110
            if not part(values, attributes):
                return False
        return True

    return check


def _any(checks: tuple[Check, ...]) -> Check:
    def check(values: Values, attributes: Attributes) -> bool:
        for part in checks:  # noqa: SIM110 (as in _all)
            if part(values, attributes):
                return True
        return False

    return check


def aligner(threshold: Any) -> Aligner:
    """`conditions.align(actual, threshold)` with the threshold's conversions done once."""
    threshold_is_bool = isinstance(threshold, bool)
    as_decimal = _as_decimal(threshold)

    def aligned(actual: Any) -> Any:
        if isinstance(actual, bool) != threshold_is_bool:
            return _NEVER_EQUAL
        return as_decimal if isinstance(actual, Decimal) else threshold

    return aligned


def _leaf(leaf: Compare | Between | Member) -> Check:
    test = _leaf_test(leaf)
    name, from_features = _target(leaf)
    # Fast path: a plain number threshold against an int/float (no alignment needed) or a
    # Decimal (aligned once here, as `aligner` would align it on every call).
    direct = isinstance(leaf, Compare) and type(leaf.value) in PLAIN_NUMBERS
    operator, threshold = (
        (OPERATORS[leaf.op], leaf.value) if isinstance(leaf, Compare) else (None, None)
    )
    decimal_threshold = _as_decimal(threshold)

    def check(values: Values, attributes: Attributes) -> bool:
        actual = (values if from_features else attributes).get(name)
        if actual is None:
            return False
        if direct:
            kind = type(actual)
            if kind is int or kind is float:
                return operator(actual, threshold)  # type: ignore[misc]
            if kind is Decimal:
                return operator(actual, decimal_threshold)  # type: ignore[misc]
        try:
            return test(actual)
        except TypeError:  # e.g. a text attribute against a number: simply false
            return False

    return check


def _as_decimal(threshold: Any) -> Any:
    """What `aligner(threshold)` compares a Decimal with."""
    return Decimal(repr(threshold)) if isinstance(threshold, float) else threshold


def _target(leaf: _Leaf) -> tuple[str, bool]:
    if leaf.feature is not None:
        return leaf.feature, True
    return leaf.attribute or "", False


def _leaf_test(leaf: Compare | Between | Member) -> Callable[[Any], bool]:
    match leaf:
        case Compare(op=op, value=value):
            operator, align = OPERATORS[op], aligner(value)
            return lambda actual: bool(operator(actual, align(actual)))
        case Between(between=(low, high)):
            align_low, align_high = aligner(low), aligner(high)
            return lambda actual: bool(align_low(actual) <= actual <= align_high(actual))
        case Member(in_=options):
            aligners = tuple(aligner(option) for option in options)
            return lambda actual: any(actual == align(actual) for align in aligners)
    raise TypeError(f"not a leaf: {leaf!r}")


@dataclass(frozen=True)
class CompiledRule:
    """One rule: its name and class, its condition as a closure, and what it reads."""

    name: str
    then: str
    check: Check
    reads: tuple[tuple[str, str, bool], ...]  # (key in `read`, name, from features)


@dataclass(frozen=True)
class CompiledScore:
    """One of R, F, M: its feature and its bands as (operator, threshold, the threshold a
    Decimal is compared with, aligner, score)."""

    spec: ScoreRules
    bands: tuple[tuple[Callable[[Any, Any], bool], float, Any, Aligner, int], ...]


@dataclass(frozen=True)
class CompiledRules:
    """Every dimension's rules, in order, and the R, F, M scores, compiled; `features`: the
    part of the feature catalogue that conditions and scores read."""

    dimensions: tuple[tuple[Dimension, tuple[CompiledRule, ...]], ...]
    scores: tuple[CompiledScore, CompiledScore, CompiledScore]
    features: FeaturePlan


_cache: dict[int, tuple[Rules, CompiledRules]] = {}


def compiled_rules(rules: Rules) -> CompiledRules:
    """The compiled form of `rules`, built on first use of this rules object."""
    hit = _cache.get(id(rules))
    if hit is not None and hit[0] is rules:
        return hit[1]
    scores = rules.scores
    result = CompiledRules(
        tuple(
            (dimension, tuple(_compile_rule(r) for r in rules.dimension(dimension).rules))
            for dimension in Dimension
        ),
        (_compile_score(scores.recency), _compile_score(scores.frequency),
         _compile_score(scores.monetary)),
        feature_plan(features_read(rules)),
    )  # fmt: skip
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(next(iter(_cache)))
    _cache[id(rules)] = (rules, result)  # holding `rules` keeps its id from being reused
    return result


def features_read(rules: Rules) -> frozenset[str]:
    """The catalogue features `rules` read: in conditions, and as the R, F, M inputs."""
    read = {
        leaf.feature
        for dimension in Dimension
        for rule in rules.dimension(dimension).rules
        for leaf in leaves(rule.when)
        if leaf.feature is not None
    }
    scores = rules.scores
    read.update((scores.recency.feature, scores.frequency.feature, scores.monetary.feature))
    return frozenset(read - set(SCORE_FEATURES))


def _compile_score(spec: ScoreRules) -> CompiledScore:
    bands = tuple(
        (OPERATORS[b.op], b.value, _as_decimal(b.value), aligner(b.value), b.score)
        for b in spec.bands
    )
    return CompiledScore(spec, bands)


def _compile_rule(rule: Rule) -> CompiledRule:
    reads = tuple((leaf.key(), *_target(leaf)) for leaf in leaves(rule.when))
    return CompiledRule(rule.name, rule.then, compile_condition(rule.when), reads)
