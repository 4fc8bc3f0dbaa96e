"""PNG pictures for `report --plot` and `rules diff --plot` (matplotlib, no display needed).

Uses `matplotlib.figure.Figure` directly rather than pyplot: no global state, no GUI
backend, and PNG output goes through Agg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Matrix = Mapping[str, Mapping[str, int]]
# Business order of the default classes (best first); unknown classes follow, sorted.
CLASS_ORDER = (
    "(unclassified)",  # shared.domain.changes.UNCLASSIFIED
    "gold",
    "silver",
    "bronze",
    "none",
    "active",
    "semi_active",
    "inactive",
    "lead",
    "new",
    "established",
    "reactivated",
    "at_risk",
    "churned",
)
DIMENSION_TITLES = {
    "value_tier": "value tier",
    "activity_level": "activity level",
    "lifecycle_stage": "lifecycle stage",
}


def ordered(classes: Iterable[str]) -> list[str]:
    """Classes in business order, unknown ones after, alphabetically."""
    rank = {name: i for i, name in enumerate(CLASS_ORDER)}
    return sorted(set(classes), key=lambda c: (rank.get(c, len(rank)), c))


UNCLASSIFIED = "(unclassified)"


def matrix_axes(matrix: Matrix) -> tuple[list[str], list[str], list[list[int]]]:
    """Row labels (from), column labels (to) and the counts grid, over the same classes,
    so that the diagonal is "did not move" (nobody moves *to* unclassified)."""
    classes = set(matrix) | {to for row in matrix.values() for to in row}
    cols = ordered(classes - {UNCLASSIFIED})
    rows = ordered(classes) if UNCLASSIFIED in matrix else cols
    return rows, cols, [[int(matrix.get(r, {}).get(c, 0)) for c in cols] for r in rows]


def _bars(ax: Any, title: str, counts: Mapping[str, int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # customers come whole
    labels = ordered(counts)
    values = [counts[label] for label in labels]
    bars = ax.bar(labels, values, color="#4C72B0")
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_title(title)
    ax.set_ylabel("customers")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.margins(y=0.15)


def _heatmap(ax: Any, title: str, matrix: Matrix) -> None:
    from matplotlib.patches import Rectangle

    rows, cols, grid = matrix_axes(matrix)
    if not rows:
        ax.text(0.5, 0.5, "no customers", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_axis_off()
        return
    top = max(max(r) for r in grid) or 1
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=top, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("to")
    ax.set_ylabel("from")
    ax.set_title(title)
    for y, row in enumerate(grid):
        for x, count in enumerate(row):
            colour = "white" if count > top * 0.6 else "black"
            ax.text(x, y, str(count), ha="center", va="center", color=colour, fontsize=9)
            if rows[y] == cols[x]:  # outline the diagonal: customers who stay
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, lw=1.5, ec="#888"))


def _notes(ax: Any, notes: Mapping[str, int]) -> None:
    ax.set_axis_off()
    ax.set_title("in the period")
    for i, (label, value) in enumerate(notes.items()):
        y = 0.9 - i * 0.12
        ax.text(0.05, y, label, fontsize=11, transform=ax.transAxes, va="center")
        ax.text(0.95, y, f"{value:,}", fontsize=13, weight="bold", ha="right", va="center",
                transform=ax.transAxes)  # fmt: skip


def plot_report(
    distribution: Mapping[str, Mapping[str, int]],
    migration: Matrix,
    path: Path,
    *,
    title: str,
    notes: Mapping[str, int] | None = None,
) -> None:
    """Distribution bars per dimension above the value-tier migration heatmap and key counts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9.5), layout="constrained")
    fig.suptitle(title, fontsize=14)
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.25))
    for i, (dimension, counts) in enumerate(distribution.items()):
        _bars(fig.add_subplot(grid[0, i]), DIMENSION_TITLES.get(dimension, dimension), counts)
    heat = fig.add_subplot(grid[1, :2])
    _heatmap(heat, "value tier migration (customers)", migration)
    heat.set_ylabel("at the period start")
    heat.set_xlabel("now")
    _notes(fig.add_subplot(grid[1, 2]), notes or {})
    fig.savefig(path, format="png", dpi=100)


def plot_rules_diff(matrices: Mapping[str, Matrix], path: Path, *, title: str) -> None:
    """One current -> candidate heatmap per dimension."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * max(1, len(matrices)), 5.5), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, max(1, len(matrices)), squeeze=False)[0]
    for ax, (dimension, matrix) in zip(axes, matrices.items(), strict=False):
        total = sum(sum(row.values()) for row in matrix.values())
        moved = total - sum(row.get(source, 0) for source, row in matrix.items())
        name = DIMENSION_TITLES.get(dimension, dimension)
        _heatmap(ax, f"{name}: {moved} of {total} customers would move", matrix)
        ax.set_xlabel("candidate rules")
        ax.set_ylabel("current")
    fig.savefig(path, format="png", dpi=100)
