"""The `tierstream` command line: run services, the whole system, migrations and tools."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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


@app.command()
def ingest() -> None:
    """Run the ingest HTTP service (port 8080) in the foreground; configured by INGEST_* env."""
    from services.ingest.main import run
    from services.ingest.settings import IngestSettings

    asyncio.run(run(IngestSettings()))


@app.command()
def scorer() -> None:
    """Run the scorer (consumer, outbox relay, sweeper, read API on 8081); SCORER_* env."""
    from services.scorer.main import run

    from services.scorer.settings import ScorerSettings

    asyncio.run(run(ScorerSettings()))


@app.command()
def actions() -> None:
    """Run the actions service (dispatcher, sequences, task API on 8082); ACTIONS_* env."""
    from services.actions.main import run
    from services.actions.settings import ActionsSettings

    asyncio.run(run(ActionsSettings()))


@app.command()
def migrate() -> None:
    """Apply every service's Alembic migrations to DATABASE_URL (schemas scorer and actions)."""
    from shared.migrations import upgrade_all
    from shared.settings import ServiceSettings

    url = ServiceSettings().database_url
    asyncio.run(upgrade_all(url))
    console.print("[green]migrations applied[/green]")


@app.command()
def infra() -> None:
    """Start the embedded Kafka broker and Postgres, print their addresses, wait for Ctrl-C."""
    from cli.run import run_infra

    run_infra(console)


@app.command()
def run(
    no_demo: Annotated[
        bool, typer.Option("--no-demo", help="Do not send the demo events.")
    ] = False,
) -> None:
    """Run the whole system on this machine: embedded broker and Postgres (unless
    KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set), migrations, topics, the three services
    (restarted if one dies) and a demo stream. Ctrl-C or SIGTERM stops everything."""
    from cli.run import run_system

    raise typer.Exit(run_system(console, demo=not no_demo))


@rules_app.command("check")
def rules_check(file: Annotated[Path, typer.Argument(help="Rules YAML file to validate.")]) -> None:
    """Validate a rules file; prints its version or the precise error (exit 1)."""
    from shared.domain.rules import RulesError, load_rules

    try:
        rules = load_rules(file)
    except (RulesError, OSError) as exc:
        console.print(f"[red]invalid:[/red] {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"{file}: valid (version {rules.version})")


@rules_app.command("diff")
def rules_diff(file: Annotated[Path, typer.Argument(help="Candidate rules YAML file.")]) -> None:
    """Classify today's customers (DATABASE_URL) with a candidate rules file, changing nothing,
    and print the migration matrix per dimension."""
    from cli.rules import print_rules_diff

    raise typer.Exit(print_rules_diff(file, console))


@playbooks_app.command("check")
def playbooks_check(
    file: Annotated[Path, typer.Argument(help="Playbooks YAML file to validate.")],
) -> None:
    """Validate a playbooks file; prints a summary or the precise error (exit 1)."""
    from shared.domain.playbooks import check_playbooks

    try:
        typer.echo(check_playbooks(file))
    except (ValueError, OSError) as exc:
        console.print(f"[red]invalid:[/red] {exc}")
        raise typer.Exit(1) from exc


if __name__ == "__main__":
    app()
