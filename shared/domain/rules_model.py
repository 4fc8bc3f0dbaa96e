"""The rules file schema (pydantic): scores, three dimensions, optional hysteresis."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    field_validator,
    model_validator,
)

from shared.contracts import Dimension, refuse_nul
from shared.domain.conditions import OPERATORS, Condition, always_holds, never_holds
from shared.domain.features import BOOLEAN_FEATURES, FEATURES, SCORE_FEATURES

# A class is named in playbooks (`to: gold`), in metrics labels and in `rules diff`, whose
# marker for "no class yet" is "(unclassified)": the names playbooks can write, no more.
CLASS_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
ClassName = Annotated[str, Field(min_length=1, max_length=64, pattern=CLASS_NAME_PATTERN)]
# A rule's name is free text (it is stored with each change it decides), but Postgres text
# cannot hold a NUL character.
RuleName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(refuse_nul)]


class RuleProblem(ValueError):
    """A cross-field problem in a dimension, naming the rule and field it concerns."""

    def __init__(self, message: str, *, rule: str | None, field: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.field = field  # relative to the dimension, e.g. "rules.2.then"


class _Model(BaseModel):
    # YAML's .nan and .inf are floats too: a NaN threshold or an infinite dwell would fail
    # only later, in the scorer, for every customer it reaches.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class Rule(_Model):
    """One `{name, when, then}` rule; the first matching rule of a dimension wins."""

    name: RuleName
    when: Condition
    then: ClassName


class DimensionRules(_Model):
    """Classes of one dimension, best first (a move later in the list is a downgrade)."""

    classes: Annotated[list[ClassName], Field(min_length=1)]
    rules: Annotated[list[Rule], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> DimensionRules:
        if len(set(self.classes)) != len(self.classes):
            raise RuleProblem("a class is listed twice", rule=None, field="classes")
        folded = [name.casefold() for name in self.classes]
        if len(set(folded)) != len(folded):  # `gold` and `Gold`: a playbook's typo of the other
            first = next(name for name in self.classes if folded.count(name.casefold()) > 1)
            raise RuleProblem(f"two classes differ only in case ({first!r})", rule=None,
                              field="classes")  # fmt: skip
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise RuleProblem(
                    "two rules share this name", rule=rule.name, field=f"rules.{index}.name"
                )
            seen.add(rule.name)
            if rule.then not in self.classes:
                message = f"unknown class {rule.then!r} (declared: {', '.join(self.classes)})"
                raise RuleProblem(message, rule=rule.name, field=f"rules.{index}.then")
        if self.rules[-1].when != "always":
            message = "the last rule must be `when: always`, so every customer gets a class"
            field = f"rules.{len(self.rules) - 1}.when"
            raise RuleProblem(message, rule=self.rules[-1].name, field=field)
        self._reachable()
        given = {rule.then for rule in self.rules}
        if unused := [name for name in self.classes if name not in given]:
            message = f"no rule gives class {unused[0]!r}: add a rule for it or remove it"
            raise RuleProblem(message, rule=None, field=f"classes.{self.classes.index(unused[0])}")
        return self

    def _reachable(self) -> None:
        # Silent dead ends: customers could never be in such a class, and a playbook for it
        # would never fire. By the conditions' form only: `ge 30` after `ge 20` is not seen.
        earlier: dict[str, str] = {}  # each condition's canonical form -> the first rule's name
        for index, rule in enumerate(self.rules[:-1]):
            field = f"rules.{index}.when"
            if always_holds(rule.when):
                after = ", ".join(r.name for r in self.rules[index + 1 :])
                written = (
                    "`when: always`" if rule.when == "always" else "a `when` that always holds"
                )
                message = f"{written} before the last rule: {after} could never match"
                raise RuleProblem(message, rule=rule.name, field=field)
            if never_holds(rule.when):
                message = "this `when` never holds (`not: always`): the rule could never match"
                raise RuleProblem(message, rule=rule.name, field=field)
            key = _canonical(rule.when)
            if key in earlier:
                message = (
                    f"the same `when` as rule {earlier[key]!r} before it: the rule could never"
                    " match"
                )
                raise RuleProblem(message, rule=rule.name, field=field)
            earlier[key] = rule.name

    def rank(self, class_name: str) -> int | None:
        """Position of a class (0 = best), None when the class is not declared."""
        return self.classes.index(class_name) if class_name in self.classes else None


_CONDITION = TypeAdapter(Condition)


def _canonical(condition: Condition) -> str:
    # JSON keeps true apart from 1, which Python's == (and so the models' ==) does not.
    return json.dumps(_CONDITION.dump_python(condition, mode="json", by_alias=True), sort_keys=True)


class Band(_Model):
    """`score` when `<feature> <op> <value>`; bands are tried in order."""

    op: Literal["lt", "le", "gt", "ge", "eq"]
    value: Annotated[float, Strict()]  # lax, `value: true` was 1.0 and `value: '20'` 20.0
    score: Annotated[int, Strict(), Field(ge=1, le=5)]  # lax, `score: true` was 1


class ScoreRules(_Model):
    """How one of R, F, M is scored from one feature."""

    feature: str
    better: Literal["higher", "lower"]
    bands: Annotated[list[Band], Field(min_length=1)]
    otherwise: Annotated[int, Strict(), Field(ge=0, le=5)] = 0

    @field_validator("feature")
    @classmethod
    def _known(cls, feature: str) -> str:
        if feature not in FEATURES or feature in SCORE_FEATURES or feature in BOOLEAN_FEATURES:
            raise ValueError(f"unknown feature {feature!r} (scores read number features)")
        return feature

    @model_validator(mode="after")
    def _reachable(self) -> ScoreRules:
        # Bands are tried in order: one whose values all fall in an earlier band never gives
        # its score (`ge 30` after `ge 20`), a mistake in the order that nothing else shows.
        for index, band in enumerate(self.bands):
            for earlier in self.bands[:index]:
                if _within(band, earlier):
                    raise ValueError(
                        f"bands.{index} ({band.op} {band.value:g}) can never give its score:"
                        f" every value in it takes an earlier band ({earlier.op}"
                        f" {earlier.value:g}); list the bands from the narrowest"
                    )
        return self


def _within(band: Band, earlier: Band) -> bool:
    """Whether every value `band` holds for is one `earlier` holds for."""
    a, b = band.value, earlier.value
    if band.op == "eq":
        return bool(OPERATORS[earlier.op](a, b))
    upward, downward = ("ge", "gt"), ("le", "lt")
    if band.op in upward and earlier.op in upward:
        return a > b or (a == b and (earlier.op == "ge" or band.op == "gt"))
    if band.op in downward and earlier.op in downward:
        return a < b or (a == b and (earlier.op == "le" or band.op == "lt"))
    return False


class Scores(_Model):
    """R/F/M scoring: fixed threshold bands, or population quintiles when available."""

    mode: Literal["thresholds", "population"] = "thresholds"
    recency: ScoreRules
    frequency: ScoreRules
    monetary: ScoreRules


class Hysteresis(_Model):
    """Minimum time in a class before a downgrade on that dimension takes effect."""

    # Ten years: dates stay in range. Strict: lax, `min_dwell_days: true` was one day.
    min_dwell_days: Annotated[float, Strict(), Field(ge=0, le=3650)]


class RulesFile(_Model):
    """The YAML document as written by people."""

    description: str | None = None
    scores: Scores
    value_tier: DimensionRules
    activity_level: DimensionRules
    lifecycle_stage: DimensionRules
    # `hysteresis:` with every entry commented out is null: no hysteresis, as when absent.
    hysteresis: Annotated[
        dict[Dimension, Hysteresis], BeforeValidator(lambda raw: {} if raw is None else raw)
    ] = Field(default_factory=dict)


class Rules(RulesFile):
    """A validated rules file with its content-hash version and where it came from."""

    version: str
    source: str

    def dimension(self, dimension: Dimension) -> DimensionRules:
        """The rules of one dimension."""
        rules: DimensionRules = getattr(self, dimension.value)
        return rules

    def declared_classes(self) -> dict[Dimension, tuple[str, ...]]:
        """The classes each dimension declares, best first."""
        return {dimension: tuple(self.dimension(dimension).classes) for dimension in Dimension}
