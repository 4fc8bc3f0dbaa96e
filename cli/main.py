"""The `tierstream` command line: run services, the whole system, migrations and tools."""

from __future__ import annotations

import asyncio
import errno
import inspect
import math
import os
import re
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    help="Tierstream: real-time customer tiering and action (ingest -> Kafka -> scorer).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
rules_app = typer.Typer(
    help="Validate rules files and try them against today's customers.", no_args_is_help=True
)
playbooks_app = typer.Typer(help="Validate playbook files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(playbooks_app, name="playbooks")
console = Console(stderr=True)


def flag(name: str, help: str) -> Any:
    """An option that takes no value (a bool). `metavar=""`: typer's help otherwise shows a
    `<bool>` placeholder after it, as if it took one."""
    return typer.Option(name, help=help, metavar="")


@app.command()
def ingest() -> None:
    """Run the ingest HTTP service (port 8080) in the foreground; configured by INGEST_* env."""
    from services.ingest.__main__ import main

    main()


@app.command()
def scorer() -> None:
    """Run the scorer (consumer, outbox relay, sweeper, read API on 8081); SCORER_* env."""
    from services.scorer.__main__ import main

    main()


@app.command()
def actions() -> None:
    """Run the actions service (dispatcher, sequences, task API on 8082); ACTIONS_* env."""
    from services.actions.__main__ import main

    main()


@app.command()
def migrate(
    service: Annotated[
        str | None,
        typer.Option(help="Only this service's schema: scorer or actions (needed with --to)."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            help="Move the schema to this revision, back or forward (its data with it), e.g."
            " back before running an older release; `base` removes the service's tables,"
            " `head` is this release's latest. Moving back needs --yes. Revisions: the files"
            " in services/<service>/migrations/versions."
        ),
    ] = None,
    yes: Annotated[
        bool,
        flag(
            "--yes",
            help="Confirm a move back with --to: it drops what the later revisions added,"
            " data included (without --yes: a prompt on a terminal, else a refusal, exit 2).",
        ),
    ] = False,
) -> None:
    """Apply every service's Alembic migrations to DATABASE_URL (schemas scorer and actions),
    or with --service and --to, move one service's schema to a revision (back: with --yes)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cli.database import database_settings, failure_reason, redacted
    from shared.migrations import (
        SERVICES_WITH_TABLES,
        DowngradeRefused,
        MigrationError,
        UnknownRevision,
        move_to,
        upgrade,
        upgrade_all,
    )  # fmt: skip
    from shared.settings import ServiceSettings

    if service is not None and service not in SERVICES_WITH_TABLES:
        console.print(f"[red]--service must be one of[/red] {', '.join(SERVICES_WITH_TABLES)}")
        raise typer.Exit(2)
    if to is not None and service is None:
        console.print("[red]--to needs --service[/red] (each service has its own revisions)")
        raise typer.Exit(2)
    url = database_settings(ServiceSettings, console).database_url  # exits 2 on a bad setting
    try:
        if to is not None and service is not None:
            move_to(url, service, to, confirm_back=partial(confirm_move_back, service, to, yes))
        elif service is not None:
            upgrade(url, service)
        else:
            asyncio.run(upgrade_all(url))
    except (UnknownRevision, DowngradeRefused) as exc:
        console.print(f"[red]--to:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (OSError, SQLAlchemyError, MigrationError) as exc:
        from cli.database import database_url_hint

        hint = database_url_hint(os.environ, url)
        why = escape(f"{redacted(url)}: {failure_reason(exc)}{hint}")
        console.print(f"[red]cannot migrate[/red] {why}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green]{f'{service} at {to}' if to else 'migrations applied'}[/green]")


def confirm_move_back(service: str, to: str, yes: bool, current: str) -> bool:
    """Whether to move `service` back from `current` to `to`: --yes, or a yes at a prompt
    when a person is there to answer (a script without --yes is refused)."""
    if yes or not sys.stdin.isatty():
        return yes
    return typer.confirm(
        f"Move {service} back from {current} to {to}, dropping what the later revisions"
        " added, data included?",
        default=False,
        err=True,
    )


@app.command()
def infra() -> None:
    """Start the embedded Kafka broker and Postgres, print their addresses, wait for Ctrl-C
    (always embedded ones: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are not read)."""
    from cli.run import run_infra

    run_infra(console)


@app.command()
def run(
    no_demo: Annotated[bool, flag("--no-demo", help="Do not send the demo events.")] = False,
    forget_offsets: Annotated[
        bool,
        flag(
            "--forget-offsets",
            help="With DATABASE_URL and the embedded broker: delete the consumer offsets an"
            " earlier broker left in the database (refused otherwise: the new, empty broker's"
            " first records would be skipped).",
        ),
    ] = False,
) -> None:
    """Run the whole system on this machine: embedded broker and Postgres (unless
    KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set), migrations, topics, the three services
    (restarted if one dies) and a demo stream. Ctrl-C or SIGTERM stops everything."""
    from cli.run import run_system

    raise typer.Exit(run_system(console, demo=not no_demo, forget_offsets=forget_offsets))


@app.command()
def config() -> None:
    """Print every setting of every service and of this CLI (environment variable, default,
    meaning) as Markdown."""
    from cli.config_docs import render

    typer.echo(render(), nl=False)


@app.command("api-reference")
def api_reference() -> None:
    """Print every HTTP route of every service (parameters, answers) as Markdown."""
    from cli.api_docs import render

    typer.echo(render(), nl=False)


@rules_app.command("check")
def rules_check(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Rules YAML file to validate.")],
) -> None:
    """Validate a rules file; prints its version and rules, or the precise error (exit 1)."""
    from cli.rules import file_problem, reader_may_leave
    from shared.domain.rules import RulesError, load_rules

    try:
        rules = load_rules(file)
    except (RulesError, OSError, UnicodeDecodeError) as exc:
        line = f"[red]invalid:[/red] {escape(file_problem(file, exc))}"
        console.print(line, soft_wrap=True)  # one line however long: scripts grep it
        raise typer.Exit(1) from exc
    from cli.rules_summary import rules_table

    with reader_may_leave() as out:
        typer.echo(f"{file}: valid (version {rules.version})")
        out.print(rules_table(rules))


@rules_app.command("diff")
def rules_diff(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Candidate rules YAML file.")],
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the matrices as heatmaps into this PNG.")
    ] = None,
) -> None:
    """Classify today's customers (DATABASE_URL) with a candidate rules file, changing nothing,
    and print the migration matrix per dimension: what the scorer would decide right after the
    switch (downgrades its hysteresis holds stay; population mode uses its own quintiles)."""
    _refuse_unwritable(plot)
    if plot is not None:
        from cli.rules_plot import diff_and_plot

        raise typer.Exit(diff_and_plot(file, plot, console))
    from cli.rules import print_rules_diff

    raise typer.Exit(print_rules_diff(file, console))


def _refuse_unwritable(path: Path | None) -> None:
    """Exit 1 at once, as the write itself would say, when `path` cannot be created: found
    at the end, it came after all the reading (and a whole simulated population)."""
    if path is None:
        return
    parent = path.parent
    problem = None
    if not parent.exists():
        problem = errno.ENOENT
    elif not parent.is_dir():
        problem = errno.ENOTDIR
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = errno.EACCES
    if problem is not None:
        why = escape(f"{path}: {os.strerror(problem)}")
        console.print(f"[red]cannot write[/red] {why}", soft_wrap=True)
        raise typer.Exit(1)


def _finite(value: float | None) -> float | None:
    """Refuse nan and infinities as usage errors: click's own ranges let nan through (every
    comparison with it is false), whatever typer's checks before this make of it."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


# A simulated history of ten years at most: the scores look at months, and a period of
# millions of days would fall outside the calendar (and the memory) before it was sent.
MAX_SIMULATED_DAYS = 3650


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(min=1, max=1_000_000, help="Population size.")] = 1000,
    days: Annotated[
        float,
        typer.Option(
            min=1, max=MAX_SIMULATED_DAYS, callback=_finite, help="Simulated period, ending now."
        ),
    ] = 365,
    seed: Annotated[
        int,
        typer.Option(help="Same seed, options and end (TIERSTREAM_NOW): same events, ids too."),
    ] = 42,
    rate: Annotated[
        float | None,
        typer.Option(min=0.1, max=1_000_000, callback=_finite, help="At most this many events/s."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="Events per request.")] = 500,
    prefix: Annotated[
        str | None,
        typer.Option(
            help="Customer id prefix; default sim<seed>-<hash of the options and end>-, so a run"
            " with other options or another end makes new customers. A fixed prefix sent again"
            " with another end gives the same customers a second history."
        ),
    ] = None,
    dry_run: Annotated[bool, flag("--dry-run", help="Generate, send nothing.")] = False,
    output: Annotated[Path | None, typer.Option(help="Also write the events as JSONL.")] = None,
) -> None:
    """Send a realistic synthetic population through ingest (TIERSTREAM_INGEST_URL, _API_KEY):
    archetypes with their own buying, login and support habits over the last DAYS days."""
    from cli.simulate import SimulateOptions, run_simulate

    _refuse_unwritable(output)
    options = SimulateOptions(customers, days, seed, rate, batch_size, prefix, dry_run, output)
    raise typer.Exit(run_simulate(options, console))


@app.command("import")
def import_csv(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, metavar="FILE", help="CSV, header row.")
    ],
    type_: Annotated[
        Literal["purchase", "login", "support"],
        typer.Option("--type", help="Event type of every row."),
    ],
    column: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FIELD=COLUMN",
            help="Read an event field from a column not named as the field (repeatable), e.g."
            " customer_id=Kunde.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="Rows per request.")] = 500,
) -> None:
    """Backfill history from a CSV through ingest; bad rows go to FILE.rejects.csv.

    An interrupted import resumes from FILE.checkpoint when run again. A row without an
    event_id gets one derived from its content, compared by meaning (1000.00 = 1000, times
    in UTC), so importing the same history twice counts nothing twice.

    Exit codes:
    0  every row is in;
    1  stopped: ingest unreachable (nothing answers at TIERSTREAM_INGEST_URL, which may also
       be a mistyped address), unavailable or failing; run the same command again to resume;
    2  usage error: a bad option, or FILE does not exist;
    3  finished, some rows rejected (see FILE.rejects.csv);
    4  cannot go on until the CSV, the columns, the API key or the URL is fixed (a URL
       that is not one, or where something other than ingest answers);
    130  interrupted (Ctrl-C): run the same command again to resume."""
    from cli.csv_import import MappingError, parse_mapping
    from cli.importer import ImportOptions, run_import

    try:
        parse_mapping(column or (), type_)
    except MappingError as exc:  # a bad option: a usage error (exit 2), as the help says
        raise typer.BadParameter(str(exc), param_hint="--column") from None
    options = ImportOptions(file, type_, tuple(column or ()), batch_size)
    raise typer.Exit(run_import(options, console))


@app.command()
def report(
    since: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="Period start (YYYY-MM-DD or ISO 8601); default 30 d before its end.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="DATE", help="Period end, not included (YYYY-MM-DD or ISO 8601); default now."
        ),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG with the pictures.")] = None,
    as_json: Annotated[bool, flag("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Distribution per class at the period's end, value-tier migration, churn and
    reactivation in the period, open and overdue tasks, tasks done (late) in the period,
    sequence enrolments and exit reasons: read from the scorer and actions APIs.

    The migration pairs each customer's tier at the period's start with its tier at the
    end: one who moved and came back is on the diagonal (the scorer's
    tierstream_scorer_transitions_total counts every move instead)."""
    from cli.csv_import import RowError, parse_timestamp
    from cli.report import run_report

    bounds = {}
    for option, text in (("--since", since), ("--until", until)):
        try:
            bounds[option] = parse_timestamp(text) if text else None
        except RowError as exc:
            hint = str(exc).removeprefix("occurred_at: ")
            raise typer.BadParameter(hint, param_hint=option) from exc
    _refuse_unwritable(plot)
    raise typer.Exit(run_report(bounds["--since"], plot, as_json, console, bounds["--until"]))


@playbooks_app.command("check")
def playbooks_check(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Playbooks YAML file to validate.")],
    rules: Annotated[
        Path | None,
        typer.Option(
            help="Rules YAML file declaring the classes the playbooks may name; default the"
            " actions service's: ACTIONS_RULES_FILE, else SCORER_RULES_FILE, else the shipped"
            " rules."
        ),
    ] = None,
) -> None:
    """Validate a playbooks file, and its classes against the rules; prints a summary or the
    precise error (exit 1)."""
    from cli.rules import file_problem, reader_may_leave
    from shared.domain.playbooks import check_playbooks
    from shared.domain.rules import load_rules

    if rules is None:
        from cli.rules import actions_rules_file

        rules = actions_rules_file()  # the service's setting, exactly, and nothing else
    checked = rules
    try:
        declared = load_rules(rules)
        checked = file
        summary = check_playbooks(file, declared)
    except (ValueError, OSError) as exc:
        line = f"[red]invalid:[/red] {escape(file_problem(checked, exc))}"
        console.print(line, soft_wrap=True)  # one line however long: scripts grep it
        raise typer.Exit(1) from exc
    with reader_may_leave():
        typer.echo(summary)


# A list item in a command's docstring: `0  every row is in;` starts a line of its own.
_LIST_ITEM = re.compile(r"^\d+  ")


def unwrapped(doc: str) -> str:
    """A docstring as help text: each paragraph's source line breaks undone, but for a line
    starting a list item. Rich help prints a line break wherever the text has one, so the
    source's wrapping split sentences in the command lists and in each command's help."""
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not _LIST_ITEM.match(line):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


for _group in (app, rules_app, playbooks_app):  # every command registered above
    for _command in _group.registered_commands:
        if _command.help is None and _command.callback is not None:
            _command.help = unwrapped(_command.callback.__doc__ or "")


if __name__ == "__main__":
    app()
