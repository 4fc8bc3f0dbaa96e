"""`tierstream rules diff FILE --plot PNG`: the migration tables and the same as heatmaps."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console


def diff_and_plot(file: Path, plot: Path, console: Console) -> int:
    """Classify today's customers with the candidate rules once, print and plot the matrices."""
    from cli.plots import plot_rules_diff
    from cli.rules import matrix_table
    from services.scorer import rules_cli
    from services.scorer.settings import ScorerSettings
    from shared.domain.rules import RulesError

    try:
        matrices = asyncio.run(rules_cli.diff_rules(ScorerSettings(), file))
    except (RulesError, OSError) as exc:
        console.print(f"[red]invalid:[/red] {exc}")
        return 1
    named = {str(getattr(d, "value", d)): m for d, m in matrices.items()}
    out = Console()
    for dimension, matrix in named.items():
        out.print(matrix_table(dimension, matrix))
    plot_rules_diff(named, plot, title=f"current rules -> {file.name}")
    console.print(f"wrote {plot}")
    return 0
