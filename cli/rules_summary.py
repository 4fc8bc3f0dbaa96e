"""`tierstream rules check`: what a valid rules file says, as a table a reviewer can read."""

from __future__ import annotations

from rich.table import Table

from shared.contracts import Dimension
from shared.domain.conditions import All, AnyOf, Between, Compare, Condition, Member, Not
from shared.domain.rules import Rules

SYMBOLS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=", "ne": "!="}


def describe(condition: Condition) -> str:
    """A condition as a short expression, e.g. `m_score >= 4 and purchases_90d > 0`."""
    match condition:
        case "always":
            return "always"
        case All(all=parts):
            return " and ".join(_grouped(p) for p in parts)
        case AnyOf(any=parts):
            return " or ".join(_grouped(p) for p in parts)
        case Not(not_=inner):
            return f"not {_grouped(inner)}"
        case Compare(op=op, value=value):
            return f"{condition.key()} {SYMBOLS[op]} {value!r}"
        case Between(between=(low, high)):
            return f"{low!r} <= {condition.key()} <= {high!r}"
        case Member(in_=options):
            return f"{condition.key()} in {{{', '.join(repr(o) for o in options)}}}"
    return repr(condition)


def _grouped(condition: Condition) -> str:
    text = describe(condition)
    return f"({text})" if isinstance(condition, All | AnyOf) else text


def rules_table(rules: Rules) -> Table:
    """Each dimension's rules in evaluation order (first match wins)."""
    table = Table(title=f"rules {rules.version} (first match wins per dimension)")
    for column in ("dimension", "#", "rule", "class", "when"):
        table.add_column(column, overflow="fold")
    for dimension in Dimension:
        for i, rule in enumerate(rules.dimension(dimension).rules, start=1):
            label = dimension.value if i == 1 else ""
            table.add_row(label, str(i), rule.name, rule.then, describe(rule.when))
        table.add_section()
    return table
