"""Rules compiled once for the hot path: conditions as generated functions.

`compile_condition(c)(features, attributes)` returns exactly what
`conditions.evaluate(c, features, attributes)` returns; it only skips the per-call
pattern matching and, for plain number comparisons, the per-leaf calls. Each dimension's
rule list becomes one generated function (`first_matcher`). `compiled_rules(rules)` is
cached per rules object, so a scorer compiles its rules once, not once per customer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
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
Matcher = Callable[[Values, Attributes], "CompiledRule | None"]
# Exact types for which `align` is the identity when both sides have one of them.
PLAIN_NUMBERS = frozenset((int, float))
# Compiled forms of the few rules objects a process uses at a time (keyed by identity).
_CACHE_SIZE = 8


def compile_condition(condition: Condition) -> Check:
    """A function equivalent to `conditions.evaluate(condition, ...)` (generated source)."""
    constants: dict[str, Any] = {}
    check: Check = _generated([f"return {_expression(condition, constants)}"], constants)
    return check


def first_matcher(rules: Sequence[Rule], compiled: Sequence[CompiledRule]) -> Matcher:
    """One function for a dimension's rule list: the first rule whose condition holds.

    The same checks in the same order as evaluating each rule's condition in turn, but as
    one generated function of `if` statements whose number comparisons are written inline: no
    Python call per condition, per `all`/`any` or per plain number comparison (classifying
    was a third of the scorer's time per customer).
    """
    constants: dict[str, Any] = {}
    lines = []
    for index, (rule, done) in enumerate(zip(rules, compiled, strict=True)):
        constants[f"_rule{index}"] = done
        lines += [f"if {_expression(rule.when, constants)}:", f"    return _rule{index}"]
    matcher: Matcher = _generated([*lines, "return None"], constants)
    return matcher


def _generated(
    body: list[str], constants: dict[str, Any], params: str = "values, attributes"
) -> Any:
    # Names and thresholds reach the source only as repr() of strings and ints or as
    # constants bound in the namespace, never as text taken from the rules file.
    source = f"def generated({params}):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = {"Decimal": Decimal, **constants}
    exec(compile(source, "<compiled rules>", "exec"), namespace)  # noqa: S102
    return namespace["generated"]


# Infix forms of the operators, for the generated source.
_SYMBOLS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _expression(condition: Condition, constants: dict[str, Any]) -> str:
    """`condition` as one Python expression over `values` and `attributes` (a bool)."""
    match condition:
        case "always":
            return "True"
        case All(all=parts):  # `and`/`or` short-circuit in order, as all()/any() do
            return "(" + " and ".join(_expression(p, constants) for p in parts) + ")"
        case AnyOf(any=parts):
            return "(" + " or ".join(_expression(p, constants) for p in parts) + ")"
        case Not(not_=inner):
            return f"(not {_expression(inner, constants)})"
        case Compare() | Between() | Member():
            return _leaf_expression(condition, constants)
    raise TypeError(f"not a condition: {condition!r}")


def _leaf_expression(leaf: Compare | Between | Member, constants: dict[str, Any]) -> str:
    at = len(constants)  # a fresh suffix for this leaf's constants
    name, from_features = _target(leaf)
    actual = f"{'values' if from_features else 'attributes'}.get({name!r})"
    if isinstance(leaf, Compare) and type(leaf.value) is bool and leaf.op == "eq":
        # Only a bool equals a bool threshold (align), and bools are singletons.
        return f"({actual} is {leaf.value!r})"
    # A missing value is false; anything else goes through the aligned test.
    constants[f"_s{at}"] = _tolerant(_leaf_test(leaf))
    if isinstance(leaf, Compare) and type(leaf.value) in PLAIN_NUMBERS:
        # Inline where alignment changes nothing: int/float against the threshold as it
        # is, a Decimal against the threshold as a Decimal (aligned once, here).
        op = _SYMBOLS[leaf.op]
        constants[f"_t{at}"], constants[f"_d{at}"] = leaf.value, _as_decimal(leaf.value)
        return (
            f"(False if (a := {actual}) is None else a {op} _t{at}"
            f" if (k := type(a)) is int or k is float"
            f" else a {op} _d{at} if k is Decimal else _s{at}(a))"
        )
    return f"(False if (a := {actual}) is None else _s{at}(a))"


def _tolerant(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def check(actual: Any) -> bool:
        try:
            return test(actual)
        except TypeError:  # e.g. a text attribute against a number: simply false
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
            return _membership(options)
    raise TypeError(f"not a leaf: {leaf!r}")


def _membership(options: Sequence[Any]) -> Callable[[Any], bool]:
    """`any(actual == align(actual, option) ...)` as set lookups: a list of 90,000 account
    ids took 12 ms per customer item by item. `align` keeps true / false apart from numbers
    (True == 1 in Python), so they get a set of their own; a Decimal is compared with the
    options as Decimals (0.3 as Decimal("0.3")). Equal numbers hash alike (1, 1.0,
    Decimal(1)), so the lookups hold exactly where `==` does. A missing option never equals."""
    booleans = frozenset(o for o in options if isinstance(o, bool))
    others = frozenset(o for o in options if o is not None and not isinstance(o, bool))
    as_decimals = frozenset(_as_decimal(o) for o in others)

    def test(actual: Any) -> bool:
        if isinstance(actual, bool):
            return actual in booleans
        return actual in (as_decimals if isinstance(actual, Decimal) else others)

    return test


@dataclass(frozen=True)
class CompiledRule:
    """One rule as a dimension's matcher returns it: its name, its class, what it reads."""

    name: str
    then: str
    reads: tuple[tuple[str, str, bool], ...]  # (key in `read`, name, from features)


@dataclass(frozen=True)
class CompiledScore:
    """One of R, F, M: its feature, its bands as (operator, threshold, the threshold a
    Decimal is compared with, aligner, score), and `banded`: the score of a value by the
    bands (a generated function, the comparisons inline)."""

    spec: ScoreRules
    bands: tuple[tuple[Callable[[Any, Any], bool], float, Any, Aligner, int], ...]
    banded: Callable[[Any], int]


@dataclass(frozen=True)
class CompiledRules:
    """Every dimension's rules as one matcher, and the R, F, M scores, compiled;
    `features`: the part of the feature catalogue that conditions and scores read."""

    matchers: tuple[tuple[Dimension, Matcher], ...]  # each dimension's `first_matcher`
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
        tuple((d, _matcher(rules.dimension(d).rules)) for d in Dimension),
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
    # int and float against the thresholds as they are, a Decimal against them as
    # Decimals, anything else (None, text, bool) through the aligned comparisons.
    constants: dict[str, Any] = {"_rest": _banded_rest(bands, spec.otherwise)}
    numbers, decimals = [], []
    for index, band in enumerate(spec.bands):
        op, score = _SYMBOLS[band.op], band.score
        constants[f"_t{index}"], constants[f"_d{index}"] = band.value, _as_decimal(band.value)
        numbers.append(f"    if value {op} _t{index}: return {score!r}")
        decimals.append(f"    if value {op} _d{index}: return {score!r}")
    body = [
        "k = type(value)", "if k is int or k is float:", *numbers, f"    return {spec.otherwise!r}",
        "if k is Decimal:", *decimals, f"    return {spec.otherwise!r}", "return _rest(value)",
    ]  # fmt: skip
    return CompiledScore(spec, bands, _generated(body, constants, params="value"))


def _banded_rest(
    bands: tuple[tuple[Callable[[Any, Any], bool], float, Any, Aligner, int], ...], otherwise: int
) -> Callable[[Any], int]:
    def score(value: Any) -> int:
        if value is None or isinstance(value, str | bool):
            return otherwise
        for operator, _, _, align, band_score in bands:
            if operator(value, align(value)):
                return band_score
        return otherwise

    return score


def _matcher(rules: Sequence[Rule]) -> Matcher:
    return first_matcher(rules, compile_dimension(rules))


def compile_dimension(rules: Sequence[Rule]) -> list[CompiledRule]:
    """Each rule with what a change it decides carries (`CompiledRule.reads`)."""
    compiled: list[CompiledRule] = []
    earlier: dict[str, tuple[str, str, bool]] = {}  # what the rules before read, in order
    for rule in rules:
        one = _compile_rule(rule)
        if not one.reads:
            # A catch-all (`always`) decides by every earlier rule's not matching: a change
            # it makes carries what those read (days since the last activity for
            # `inactive`), not nothing.
            one = dataclasses.replace(one, reads=tuple(earlier.values()))
        earlier.update((read[0], read) for read in one.reads)
        compiled.append(one)
    return compiled


def carried_features(rules: Rules, dimension: Dimension) -> dict[str, frozenset[str]]:
    """Per class of `dimension`, the features some change to it can carry (a change carries
    those its deciding rule read, and one class may be given by several rules)."""
    carried: dict[str, set[str]] = {name: set() for name in rules.dimension(dimension).classes}
    for one in compile_dimension(rules.dimension(dimension).rules):
        carried[one.then].update(name for _, name, from_features in one.reads if from_features)
    return {name: frozenset(features) for name, features in carried.items()}


def _compile_rule(rule: Rule) -> CompiledRule:
    reads = tuple((leaf.key(), *_target(leaf)) for leaf in leaves(rule.when))
    return CompiledRule(rule.name, rule.then, reads)
