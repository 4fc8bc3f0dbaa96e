"""`tierstream simulate`: a synthetic population sent through ingest (or written to a file)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.api_client import (
    ApiClient,
    ApiError,
    BatchRejected,
    ConfigError,
    Endpoints,
    reference_now,
    split_batches,
)
from cli.batches import RequestSize, send_in_halves
from cli.progress import progress_bar
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


def send_events(
    client: ApiClient,
    events: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 500,
    rate: float | None = None,
    on_sent: Callable[[int], None] = lambda n: None,
) -> int:
    """Send in batches within ingest's limits, at most `rate` events/s; the count accepted.
    A request ingest refuses as a whole (over its own, lower, limits) is sent in halves."""
    if rate is not None:
        batch_size = max(1, min(batch_size, int(rate / 10)))  # ~10 requests/s: a smooth rate
    started, sent = time.monotonic(), 0
    size = RequestSize()

    def send(batch: Sequence[Mapping[str, Any]]) -> int:
        return len(client.send_batch(batch))

    for batch in split_batches(events, max_events=min(batch_size, 1000)):
        for part in size.split(batch):
            sent += send_in_halves(send, part, size)
            on_sent(len(part))
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    return sent


def write_jsonl(
    events: Sequence[Mapping[str, Any]],
    path: Path,
    on_written: Callable[[int], None] = lambda n: None,
) -> None:
    """One JSON event per line, as they would be sent; `on_written` hears the count so far
    every thousand events and at the end."""
    with path.open("w", encoding="utf-8") as out:
        for done, event in enumerate(events, 1):
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
            if done % 1000 == 0:
                on_written(done)
    on_written(len(events))


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
        endpoints = None if options.dry_run else Endpoints.from_env()  # before the long part
        _starts_within_the_calendar(end, options.days)
    except ConfigError as exc:
        console.print(f"[red]invalid configuration:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    except ValueError as exc:
        console.print(f"[red]cannot simulate:[/red] {escape(str(exc))}", soft_wrap=True)
        return 1
    population = _generate(options, end, console)
    started = time.monotonic()
    accepted: int | None = None
    if options.output is not None and not _write_output(population, options.output, console):
        return 1
    if endpoints is not None:
        try:
            accepted = _send_with_progress(population, options, endpoints, console)
        except ApiError as exc:
            # Refused: ingest answered no (4xx). No answer, a 5xx or a bad URL is no refusal.
            refused = 400 <= exc.status < 500
            told = "ingest refused the events" if refused else "could not send the events"
            console.print(f"[red]{told}:[/red] {escape(_why(exc))}", soft_wrap=True)
            return 1
    console.print(summary_table(population, accepted, time.monotonic() - started))
    return 0


def _starts_within_the_calendar(end: datetime, days: float) -> None:
    """ConfigError when DAYS of history before `end` begin before year 1 (an OverflowError
    traceback half-way through the generation)."""
    try:
        end - timedelta(days=days + 1)
    except OverflowError:
        raise ConfigError(
            f"TIERSTREAM_NOW={end.isoformat()} leaves no room for {days:g} days of history"
            " before it (they would start before year 1)"
        ) from None


def _why(exc: ApiError) -> str:
    """The error, with the first few of ingest's reasons when it gave them."""
    if isinstance(exc, BatchRejected) and exc.errors:
        return f"{str(exc).rstrip('.')} ({exc.reasons()})"
    return str(exc)


def _generate(options: SimulateOptions, end: datetime, console: Console) -> Population:
    """The population, counting its customers as they are made."""
    with progress_bar(console, transient=True) as bar:
        task = bar.add_task("generating", total=options.customers, rate="customers")
        return simulate_population(
            seed=options.seed,
            customers=options.customers,
            days=options.days,
            end=end,
            prefix=options.prefix,
            on_customer=lambda done: bar.update(task, completed=done),
        )


def _write_output(population: Population, path: Path, console: Console) -> bool:
    """Write the JSONL file; False after saying why it could not be written."""
    try:
        with progress_bar(console, transient=True) as bar:
            task = bar.add_task("writing", total=len(population.events), rate="events")
            write_jsonl(population.events, path, lambda done: bar.update(task, completed=done))
    except OSError as exc:
        line = f"[red]cannot write {escape(str(path))}:[/red] {exc.strerror or exc}"
        console.print(line, soft_wrap=True)  # one line however long: scripts grep it
        return False
    console.print(f"wrote {len(population.events)} events to {path}")
    return True


def _send_with_progress(
    population: Population, options: SimulateOptions, endpoints: Endpoints, console: Console
) -> int:
    total = len(population.events)
    with ApiClient(endpoints) as client, progress_bar(console) as bar:
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
