"""`tierstream rules diff FILE --plot PNG`: the migration tables and the same as heatmaps."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape


def diff_and_plot(file: Path, plot: Path, console: Console) -> int:
    """Classify today's customers with the candidate rules once, print and plot the matrices."""
    from cli.plots import plot_rules_diff
    from cli.rules import diff_matrices, print_matrices

    matrices = diff_matrices(file, console)
    if matrices is None:
        return 1
    print_matrices(matrices)
    try:
        plot_rules_diff(matrices, plot, title=f"current rules -> {file.name}")
    except OSError as exc:
        line = f"[red]cannot write {escape(str(plot))}:[/red] {exc.strerror or exc}"
        console.print(line, soft_wrap=True)  # one line however long: scripts grep it
        return 1
    console.print(f"wrote {plot}")
    return 0
