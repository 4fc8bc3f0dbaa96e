"""`tierstream simulate`: a synthetic population sent through ingest (or written to a file)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.api_client import ApiClient, ApiError, Endpoints, reference_now, split_batches
from cli.simulation import Population, simulate_population


@dataclass(frozen=True)
class SimulateOptions:
    """What the user asked `simulate` for."""

    customers: int
    days: float
    seed: int
    rate: float | None = None
    batch_size: int = 500
    prefix: str | None = None
    dry_run: bool = False
    output: Path | None = None


def progress_bar(console: Console) -> Progress:
    """The progress bar every long CLI command shows."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    )


def send_events(
    client: ApiClient,
    events: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 500,
    rate: float | None = None,
    on_sent: Callable[[int], None] = lambda n: None,
) -> int:
    """Send in batches within ingest's limits, at most `rate` events/s; the count accepted."""
    if rate is not None:
        batch_size = max(1, min(batch_size, int(rate / 10)))  # ~10 requests/s: a smooth rate
    started, sent = time.monotonic(), 0
    for batch in split_batches(events, max_events=min(batch_size, 1000)):
        sent += len(client.send_batch(batch))
        on_sent(len(batch))
        if rate is not None:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return sent


def write_jsonl(events: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One JSON event per line, as they would be sent."""
    with path.open("w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")


def summary_table(population: Population, accepted: int | None, seconds: float) -> Table:
    """Customers per archetype and events per type, with totals."""
    table = Table(title="simulation", show_footer=False)
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    for name, count in sorted(Counter(population.archetypes.values()).items()):
        table.add_row(f"customers: {name}", str(count))
    customers = f"customers ({escape(population.prefix)}...)"
    table.add_row(customers, str(len(population.archetypes)), end_section=True)
    for kind, count in sorted(population.counts().items()):
        table.add_row(f"events: {kind}", str(count))
    spend = sum(Decimal(e["amount"]) for e in population.events if e["type"] == "purchase")
    table.add_row("purchase value (EUR)", f"{spend:,.2f}")
    if accepted is not None:
        table.add_row("accepted by ingest", str(accepted))
        table.add_row("events/s", f"{accepted / max(seconds, 1e-6):,.0f}")
    return table


def run_simulate(options: SimulateOptions, console: Console) -> int:
    """Generate, then write or send with a progress bar; print the summary. Exit code."""
    try:
        end = reference_now()
    except ValueError as exc:
        console.print(f"[red]cannot simulate:[/red] {escape(str(exc))}")
        return 1
    population = simulate_population(
        seed=options.seed,
        customers=options.customers,
        days=options.days,
        end=end,
        prefix=options.prefix,
    )
    started = time.monotonic()
    accepted: int | None = None
    if options.output is not None and not _write_output(population, options.output, console):
        return 1
    if not options.dry_run:
        try:
            accepted = _send_with_progress(population, options, console)
        except ApiError as exc:
            console.print(f"[red]ingest refused the events:[/red] {escape(str(exc))}")
            return 1
    console.print(summary_table(population, accepted, time.monotonic() - started))
    return 0


def _write_output(population: Population, path: Path, console: Console) -> bool:
    """Write the JSONL file; False after saying why it could not be written."""
    try:
        write_jsonl(population.events, path)
    except OSError as exc:
        console.print(f"[red]cannot write {escape(str(path))}:[/red] {exc.strerror or exc}")
        return False
    console.print(f"wrote {len(population.events)} events to {path}")
    return True


def _send_with_progress(population: Population, options: SimulateOptions, console: Console) -> int:
    total = len(population.events)
    with ApiClient(Endpoints.from_env()) as client, progress_bar(console) as bar:
        task = bar.add_task("sending", total=total, rate="")
        started = time.monotonic()

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            speed = done / max(time.monotonic() - started, 1e-6)
            bar.update(task, advance=n, rate=f"{speed:,.0f} ev/s")

        return send_events(
            client,
            population.events,
            batch_size=options.batch_size,
            rate=options.rate,
            on_sent=advance,
        )
