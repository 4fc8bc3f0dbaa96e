"""`tierstream rules diff`: today's customers under a candidate rules file, as tables."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.table import Table


def matrix_table(title: str, matrix: dict[str, dict[str, int]]) -> Table:
    """A from -> to count table; the diagonal is customers that would not move."""
    targets = sorted({to for row in matrix.values() for to in row})
    table = Table(title=title, show_lines=False)
    table.add_column("from \\ to", style="bold")
    for target in targets:
        table.add_column(target, justify="right")
    for source in sorted(matrix, key=str):
        table.add_row(str(source), *[str(matrix[source].get(t, 0)) for t in targets])
    return table


def print_rules_diff(file: Path, console: Console) -> int:
    """Print the migration matrix per dimension; exit code 1 on an invalid file."""
    from services.scorer.rules_cli import diff_rules
    from services.scorer.settings import ScorerSettings
    from shared.domain.rules import RulesError

    try:
        matrices = asyncio.run(diff_rules(ScorerSettings(), file))
    except (RulesError, OSError) as exc:
        console.print(f"[red]invalid:[/red] {exc}")
        return 1
    out = Console()
    for dimension, matrix in matrices.items():
        out.print(matrix_table(str(getattr(dimension, "value", dimension)), matrix))
    return 0
