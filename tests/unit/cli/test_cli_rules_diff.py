"""`tierstream rules diff`: the tables list classes in the rules file's order, best first."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from cli.rules import Matrix, matrix_table, print_rules_diff
from shared.contracts import Dimension
from shared.domain.changes import migration_matrix
from shared.domain.rules import default_rules_path

# As the scorer's diff returns them: from the pairs, sorted by name.
MOVES: dict[Dimension, list[tuple[str | None, str]]] = {
    Dimension.VALUE_TIER: [
        ("silver", "gold"), ("none", "bronze"), (None, "silver"), ("gold", "gold"),
        ("bronze", "none"), ("retired", "none"),
    ],
    Dimension.ACTIVITY_LEVEL: [("inactive", "active"), ("active", "semi_active")],
    Dimension.LIFECYCLE_STAGE: [("new", "established"), ("churned", "reactivated")],
}  # fmt: skip


def header_and_rows(table: str) -> tuple[list[str], list[str]]:
    """A printed table's column titles (after `from \\ to`) and its row titles."""
    lines = table.splitlines()
    header = next(line for line in lines if "from \\ to" in line)
    rows = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    return [cell.strip() for cell in header.split("┃")[2:-1]], rows


def test_a_matrix_table_lists_classes_in_the_declared_order() -> None:
    matrix = migration_matrix(MOVES[Dimension.VALUE_TIER])
    out = Console(record=True, width=200)
    out.print(matrix_table("value_tier", matrix, ["gold", "silver", "bronze", "none"]))
    columns, rows = header_and_rows(out.export_text())
    assert columns == ["gold", "silver", "bronze", "none"]
    # never classified first, then best first; a class the candidate lacks last
    assert rows == ["(unclassified)", "gold", "silver", "bronze", "none", "retired"]


def test_rules_diff_prints_the_candidates_classes_best_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # They were sorted by name: bronze, gold, none, silver.
    import services.scorer.rules_cli as rules_cli

    async def diff_rules(*_: Any, **__: Any) -> dict[Dimension, Matrix]:
        return {d: migration_matrix(pairs) for d, pairs in MOVES.items()}

    monkeypatch.setattr(rules_cli, "diff_rules", diff_rules)
    assert print_rules_diff(default_rules_path(), Console(width=200)) == 0
    shown = capsys.readouterr().out
    value_tier = shown.split("activity_level")[0]
    columns, rows = header_and_rows(value_tier)
    assert columns == ["gold", "silver", "bronze", "none"], shown
    assert rows == ["(unclassified)", "gold", "silver", "bronze", "none", "retired"], shown
    activity = shown.split("activity_level")[1].split("lifecycle_stage")[0]
    assert header_and_rows(activity)[0] == ["active", "semi_active"], shown
