"""The progress display every long CLI command shows, on the commands' stderr console."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_bar(console: Console, *, transient: bool = False) -> Progress:
    """The progress bar every long CLI command shows (a task's `rate` field: its speed).

    A transient one is for a phase before the command's real output: it vanishes when done,
    and is not drawn at all off a terminal, where its last state would only be noise among
    the lines scripts read.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=transient and not console.is_terminal,
    )


def tracked(
    bar: Progress, items: Iterable[T], description: str, total: int | None = None
) -> Iterator[T]:
    """`items`, counted on a new task of `bar` (without a total: a count and a pulsing bar)."""
    task = bar.add_task(description, total=total, rate="")
    done = 0
    for item in items:
        yield item
        done += 1
        bar.update(task, completed=done)
    bar.update(task, total=done, completed=done)  # the real count, whatever was announced
