"""`tierstream report`: distribution, migration, churn, task SLA and sequences, from the APIs.

The value-tier migration of a period pairs each customer's class at the period start with
its class now: the start class is the `from` of its first value-tier change that occurred
in the period; a customer that did not change is on the diagonal; one first classified in
the period comes from "(unclassified)". The period's changes come from the scorer's
change feed (`GET /v1/changes?since=`) in one paginated read.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from cli.api_client import ApiClient, ApiError, ConfigError, Endpoints, reference_now
from cli.plots import DIMENSION_TITLES, ordered
from cli.progress import progress_bar, tracked
from shared.domain.changes import migration_matrix

DIMENSIONS = ("value_tier", "activity_level", "lifecycle_stage")
Change = Mapping[str, Any]


@dataclass(frozen=True)
class CustomerHistory:
    """A customer's current classes and its tier-change history (oldest first)."""

    customer_id: str
    classes: Mapping[str, str]
    changes: Sequence[Change]


@dataclass(frozen=True)
class Report:
    """Everything `report` shows, as plain data (also its --json form)."""

    now: str
    since: str
    customers: int
    distribution: dict[str, dict[str, int]]
    migration: dict[str, dict[str, int]]
    churned: int
    reactivated: int
    tasks: dict[str, dict[str, int]]
    enrolments: dict[str, dict[str, int]]


def _in_period(change: Change, since: datetime) -> bool:
    return datetime.fromisoformat(str(change["occurred_at"])) >= since


def start_class(history: CustomerHistory, dimension: str, since: datetime) -> str | None:
    """The customer's class on `dimension` when the period began (None: not yet classified)."""
    for change in history.changes:
        if change["dimension"] == dimension and _in_period(change, since):
            from_class = change.get("from")
            return None if from_class is None else str(from_class)
    return history.classes[dimension]


def period_migration(
    histories: Iterable[CustomerHistory], dimension: str, since: datetime
) -> dict[str, dict[str, int]]:
    """From (class at the period start) -> to (class now) -> customers."""
    pairs = [(start_class(h, dimension, since), h.classes[dimension]) for h in histories]
    return migration_matrix(pairs)


def customers_moved_to(histories: Iterable[CustomerHistory], stage: str, since: datetime) -> int:
    """Customers who entered lifecycle `stage` during the period."""
    return sum(
        any(
            c["dimension"] == "lifecycle_stage" and c["to"] == stage and _in_period(c, since)
            for c in h.changes
        )
        for h in histories
    )


def tasks_per_queue(
    open_tasks: Iterable[Change], overdue: Iterable[Change]
) -> dict[str, dict[str, int]]:
    """{queue: {"open": n, "overdue": m}}."""
    opened = Counter(str(t.get("queue")) for t in open_tasks)
    late = Counter(str(t.get("queue")) for t in overdue)
    return {q: {"open": opened[q], "overdue": late[q]} for q in sorted(set(opened) | set(late))}


def enrolments_by_status(enrolments: Iterable[Change]) -> dict[str, dict[str, int]]:
    """{sequence: {status: n}}."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in enrolments:
        counts[str(item.get("sequence"))][str(item.get("status"))] += 1
    return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}


def fetch_histories(
    client: ApiClient, since: datetime, bar: Progress, customers_total: int | None = None
) -> list[CustomerHistory]:
    """Every customer with the changes that occurred in the period (oldest first), counted
    on `bar` as they are read."""
    listing = client.paginate("scorer", "/v1/customers", {"limit": 500})
    customers = list(tracked(bar, listing, "customers", customers_total))
    in_period: dict[str, list[Change]] = defaultdict(list)
    changes = client.paginate("scorer", "/v1/changes", {"since": since.isoformat(), "limit": 500})
    for change in tracked(bar, changes, "changes in the period"):
        in_period[str(change["customer_id"])].append(change)
    return [
        CustomerHistory(
            str(c["customer_id"]),
            {d: str(c[d]) for d in DIMENSIONS},
            in_period[str(c["customer_id"])],
        )
        for c in customers
    ]


def collect_report(client: ApiClient, bar: Progress, *, since: datetime, now: datetime) -> Report:
    """Read the scorer and actions APIs and put the report together (each listing counted
    on `bar`: a report of many customers reads for a while)."""
    stats = client.get("scorer", "/v1/stats/tiers")
    histories = fetch_histories(client, since, bar, int(stats.get("customers", 0)) or None)
    tasks = {"status": "open", "limit": 100}
    open_tasks = tracked(bar, client.paginate("actions", "/v1/tasks", tasks), "open tasks")
    overdue = tracked(
        bar,
        client.paginate("actions", "/v1/tasks", {**tasks, "overdue": "true"}),
        "overdue tasks",
    )
    enrolments = tracked(
        bar, client.paginate("actions", "/v1/sequences/enrollments", {"limit": 100}), "enrolments"
    )
    return Report(
        now=now.isoformat(),
        since=since.isoformat(),
        customers=int(stats.get("customers", 0)),
        distribution={d: dict(stats.get(d, {})) for d in DIMENSIONS},
        migration=period_migration(histories, "value_tier", since),
        churned=customers_moved_to(histories, "churned", since),
        reactivated=customers_moved_to(histories, "reactivated", since),
        tasks=tasks_per_queue(list(open_tasks), list(overdue)),
        enrolments=enrolments_by_status(enrolments),
    )


def distribution_table(report: Report) -> Table:
    """Customers per class, one block per dimension, with shares."""
    table = Table(title=f"customers by class ({report.customers} customers)")
    for column in ("dimension", "class", "customers", "share"):
        table.add_column(column, justify="right" if column in ("customers", "share") else "left")
    for dimension, counts in report.distribution.items():
        for i, name in enumerate(ordered(counts)):
            share = counts[name] / report.customers if report.customers else 0.0
            label = DIMENSION_TITLES[dimension] if i == 0 else ""
            table.add_row(label, name, str(counts[name]), f"{share:.0%}")
        table.add_section()
    return table


def migration_table(report: Report) -> Table:
    """Value-tier migration: class at the period start (rows) -> class now (columns)."""
    targets = ordered(to for row in report.migration.values() for to in row)
    table = Table(title=f"value tier migration since {report.since[:10]}")
    table.add_column("from \\ to", style="bold")
    for target in targets:
        table.add_column(target, justify="right")
    for source in ordered(report.migration):
        row = report.migration[source]
        table.add_row(source, *[str(row.get(t, 0)) for t in targets])
    return table


def actions_tables(report: Report) -> list[Table]:
    """Lifecycle movements, tasks per queue and enrolments per sequence and status."""
    moves = Table(title=f"lifecycle since {report.since[:10]}")
    moves.add_column("moved to")
    moves.add_column("customers", justify="right")
    moves.add_row("churned", str(report.churned))
    moves.add_row("reactivated", str(report.reactivated))
    tasks = Table(title="open tasks per queue")
    for column in ("queue", "open", "overdue"):
        tasks.add_column(column, justify="left" if column == "queue" else "right")
    for queue, counts in report.tasks.items():
        tasks.add_row(queue, str(counts["open"]), str(counts["overdue"]))
    statuses = sorted({s for c in report.enrolments.values() for s in c})
    enrolled = Table(title="sequence enrolments by status")
    enrolled.add_column("sequence")
    for status in statuses:
        enrolled.add_column(status, justify="right")
    for sequence, counts in report.enrolments.items():
        enrolled.add_row(sequence, *[str(counts.get(s, 0)) for s in statuses])
    return [moves, tasks, enrolled]


def run_report(since: datetime | None, plot: Path | None, as_json: bool, console: Console) -> int:
    """Collect, print (tables or JSON) and optionally plot; the exit code."""
    try:
        now = reference_now()
        endpoints = Endpoints.from_env()
    except ConfigError as exc:
        console.print(f"[red]invalid configuration:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    start = since or now - timedelta(days=30)
    try:
        with (
            ApiClient(endpoints, retry_for=0) as client,
            progress_bar(console, transient=True) as bar,
        ):
            report = collect_report(client, bar, since=start, now=now)
    except ApiError as exc:
        console.print(f"[red]cannot read the APIs:[/red] {escape(str(exc))}")
        return 1
    out = Console()
    if as_json:
        out.print_json(json.dumps(asdict(report)))
    else:
        for table in (distribution_table(report), migration_table(report), *actions_tables(report)):
            out.print(table)
    return 0 if plot is None else _plot(report, plot, console)


def _plot(report: Report, path: Path, console: Console) -> int:
    from cli.plots import plot_report

    title = f"Tierstream: {report.customers} customers, {report.since[:10]} to {report.now[:10]}"
    notes = {
        "became churned": report.churned,
        "reactivated": report.reactivated,
        "open tasks": sum(q["open"] for q in report.tasks.values()),
        "overdue tasks": sum(q["overdue"] for q in report.tasks.values()),
        "active enrolments": sum(s.get("active", 0) for s in report.enrolments.values()),
    }
    try:
        plot_report(report.distribution, report.migration, path, title=title, notes=notes)
    except OSError as exc:
        console.print(f"[red]cannot write {escape(str(path))}:[/red] {exc.strerror or exc}")
        return 1
    console.print(f"wrote {path}")
    return 0
