"""`tierstream rules diff`: today's customers under a candidate rules file, as tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.database import redacted
from cli.progress import progress_bar
from shared.domain.changes import UNCLASSIFIED

Matrix = dict[str, dict[str, int]]


class Matrices(dict[str, Matrix]):
    """The migration matrix per dimension, with the classes the candidate rules declare per
    dimension, best first: the order the tables show them in."""

    def __init__(self, matrices: dict[str, Matrix], classes: dict[str, Sequence[str]]) -> None:
        super().__init__(matrices)
        self.classes = classes


def in_order(classes: Iterable[str], declared: Sequence[str]) -> list[str]:
    """Classes as the rules declare them (best first); `(unclassified)` before them, and
    classes the rules do not declare (today's, under the current rules) after, sorted."""
    rank = {name: i for i, name in enumerate([UNCLASSIFIED, *declared])}
    return sorted(set(classes), key=lambda name: (rank.get(name, len(rank)), name))


def matrix_table(title: str, matrix: Matrix, declared: Sequence[str] = ()) -> Table:
    """A from -> to count table, classes in the `declared` order (best first); the diagonal
    is customers that would not move."""
    targets = in_order((to for row in matrix.values() for to in row), declared)
    table = Table(title=title, show_lines=False)
    table.add_column("from \\ to", style="bold")
    for target in targets:
        table.add_column(target, justify="right")
    for source in in_order(matrix, declared):
        table.add_row(str(source), *[str(matrix[source].get(t, 0)) for t in targets])
    return table


class _StdoutConsole(Console):
    def on_broken_pipe(self) -> None:
        # Rich's own exits 1, as if the check had failed: `reader_may_leave` handles it.
        self.quiet = True
        raise BrokenPipeError


@contextlib.contextmanager
def reader_may_leave() -> Iterator[Console]:
    """Write a check's result to stdout (`typer.echo`, or the console given), whose reader may
    stop reading early (`| head -1`, `| grep -q valid`): the exit code stays the check's, not
    1 for the closed pipe. As Python's note on SIGPIPE says, what is left of stdout goes to
    /dev/null, so the flush at exit is quiet."""
    try:
        yield _StdoutConsole()
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def file_problem(file: Path, exc: Exception) -> str:
    """One line on why a rules or playbooks file cannot be used (not UTF-8 text included)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    return str(exc)


def actions_rules_file() -> Path:
    """The rules file the actions service checks its playbooks against (ACTIONS_RULES_FILE,
    else SCORER_RULES_FILE, else the shipped rules), read as the service reads it but alone:
    `playbooks check` is not stopped by another actions setting (a port, a webhook without
    its secret) that has nothing to do with the file. Exits 2 if the setting is invalid."""
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from services.actions.settings import ActionsSettings
    from shared.settings import default_rules_file, settings_or_exit

    variables = ActionsSettings.model_fields["rules_file"].validation_alias  # the service's

    class ActionsRulesFile(BaseSettings):
        model_config = SettingsConfigDict(
            frozen=True, populate_by_name=True, extra="ignore", hide_input_in_errors=True
        )
        rules_file: Path = Field(default_factory=default_rules_file, validation_alias=variables)

    return settings_or_exit(ActionsRulesFile).rules_file


def diff_matrices(file: Path, console: Console) -> Matrices | None:
    """The migration matrix per dimension if `file` replaced the rules; None after printing one
    line on what went wrong: the file, or the database holding today's customers."""
    import asyncpg

    from cli.database import database_settings, database_url_hint
    from services.scorer.rules_cli import diff_rules
    from services.scorer.settings import ScorerSettings
    from shared.domain.rules import RulesError, load_rules

    settings = database_settings(ScorerSettings, console)  # exits 2 on a bad setting
    try:
        with progress_bar(console, transient=True) as bar:
            task = bar.add_task("classifying", total=None, rate="customers")

            def told(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            matrices = asyncio.run(diff_rules(settings, file, told))
        declared = load_rules(file).declared_classes()  # read and checked just now
    except (RulesError, UnicodeDecodeError) as exc:  # load_rules wraps its OSErrors
        console.print(f"[red]invalid:[/red] {escape(file_problem(file, exc))}", soft_wrap=True)
        return None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = escape(redacted(settings.database_url))  # never its password
        console.print(
            f"[red]cannot read today's customers from {where}:[/red] {_db_problem(exc)}"
            + escape(database_url_hint(os.environ, settings.database_url)),
            soft_wrap=True,  # one line, however long the URL: scripts grep it
        )
        return None
    named = {str(getattr(d, "value", d)): m for d, m in matrices.items()}
    return Matrices(named, {d.value: classes for d, classes in declared.items()})


def _db_problem(exc: Exception) -> str:
    import asyncpg

    from cli.database import failure_reason

    if isinstance(exc, asyncpg.UndefinedTableError):
        return escape(f"{exc}; run `tierstream migrate`, or set DATABASE_URL to the scorer's")
    return escape(failure_reason(exc))


def print_matrices(matrices: dict[str, Matrix]) -> None:
    """One from -> to table per dimension, on stdout, classes in the rules' order."""
    out = Console()
    declared = matrices.classes if isinstance(matrices, Matrices) else {}
    for dimension, matrix in matrices.items():
        out.print(matrix_table(dimension, matrix, declared.get(dimension, ())))


def print_rules_diff(file: Path, console: Console) -> int:
    """Print the migration matrix per dimension; exit code 1 when the file or the database
    cannot be used."""
    matrices = diff_matrices(file, console)
    if matrices is None:
        return 1
    print_matrices(matrices)
    return 0
