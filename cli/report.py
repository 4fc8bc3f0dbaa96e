"""`tierstream report`: distribution, migration, churn, task SLA and sequences, from the APIs.

A period runs from `since` (inclusive) to `until` (exclusive; by default it has no end: up to
now, and the current classes). A customer's class at an instant is read from its changes in
the period, in the order they were published (a late event's change comes after a change
dated later than it, and the later one knows more): the `to` of the last one that occurred
before that instant; when none did, the `from` of the first one, or its current class when
it has none (None: it was not yet classified). The value-tier migration pairs the classes
at the period's start and end;
a customer that did not change is on the diagonal; one first classified in the period comes
from "(unclassified)". The distribution is the classes at the period's end (the scorer's
own counts when the period ends now). The period's changes come from the scorer's change
feed (`GET /v1/changes?since=`) in one paginated read; a change counts where it occurred,
and changes of one instant in the order they were published.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
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
    until: str
    customers: int
    distribution: dict[str, dict[str, int]]
    migration: dict[str, dict[str, int]]
    churned: int
    reactivated: int
    tasks: dict[str, dict[str, int]]
    enrolments: dict[str, dict[str, int]]
    exit_reasons: dict[str, dict[str, int]]


def _occurred(change: Change) -> datetime:
    return datetime.fromisoformat(str(change["occurred_at"]))


def class_at(history: CustomerHistory, dimension: str, at: datetime) -> str | None:
    """The customer's class on `dimension` at `at` (None: not yet classified then), from its
    changes in the period (`at` is in it) in publication order: see the module's doc."""
    mine = [c for c in history.changes if c["dimension"] == dimension]
    before = [c for c in mine if _occurred(c) < at]
    if before:
        return str(before[-1]["to"])
    if not mine:
        return history.classes[dimension]
    return None if mine[0].get("from") is None else str(mine[0]["from"])


def start_class(history: CustomerHistory, dimension: str, since: datetime) -> str | None:
    """The customer's class on `dimension` when the period began (None: not yet classified)."""
    return class_at(history, dimension, since)


def period_migration(
    histories: Iterable[CustomerHistory], dimension: str, since: datetime,
    until: datetime | None = None,
) -> dict[str, dict[str, int]]:  # fmt: skip
    """From (class at the period start) -> to (class at its end, default now) -> customers
    classified at the end."""
    pairs = []
    for history in histories:
        end = history.classes[dimension] if until is None else class_at(history, dimension, until)
        if end is not None:
            pairs.append((class_at(history, dimension, since), end))
    return migration_matrix(pairs)


def distribution_at(
    histories: Iterable[CustomerHistory], at: datetime
) -> dict[str, dict[str, int]]:
    """Customers per class at `at`, per dimension (those classified by then)."""
    out: dict[str, dict[str, int]] = {}
    histories = list(histories)
    for dimension in DIMENSIONS:
        counts = Counter(class_at(h, dimension, at) for h in histories)
        out[dimension] = {name: n for name, n in counts.items() if name is not None}
    return out


def customers_moved_to(
    histories: Iterable[CustomerHistory], stage: str, since: datetime,
    until: datetime | None = None,
) -> int:  # fmt: skip
    """Customers who entered lifecycle `stage` during the period."""
    return sum(
        any(
            c["dimension"] == "lifecycle_stage" and c["to"] == stage and _within(c, since, until)
            for c in h.changes
        )
        for h in histories
    )


def _within(change: Change, since: datetime, until: datetime | None) -> bool:
    return _in_period(_occurred(change), since, until)


def tasks_per_queue(
    open_tasks: Iterable[Change], overdue: Iterable[Change], done: Iterable[Change] = (),
) -> dict[str, dict[str, int]]:  # fmt: skip
    """{queue: {"open": n, "overdue": m, "done": d, "done_late": l}}: open and overdue now,
    and the tasks of `done` (completed in the period) that were completed after their due
    time (the task SLA breached)."""
    opened = Counter(str(t.get("queue")) for t in open_tasks)
    late = Counter(str(t.get("queue")) for t in overdue)
    done = list(done)
    finished = Counter(str(t.get("queue")) for t in done)
    breached = Counter(str(t.get("queue")) for t in done if _completed_late(t))
    queues = sorted(set(opened) | set(late) | set(finished))
    return {q: {"open": opened[q], "overdue": late[q], "done": finished[q],
                "done_late": breached[q]} for q in queues}  # fmt: skip


def _completed_late(task: Change) -> bool:
    completed, due = task.get("completed_at"), task.get("due_at")
    if completed is None or due is None:
        return False
    return datetime.fromisoformat(str(completed)) > datetime.fromisoformat(str(due))


def completed_between(
    tasks: Iterable[Change], since: datetime, until: datetime | None
) -> list[Change]:
    """The done tasks completed in [since, until) (until None: since `since`)."""
    return [
        t for t in tasks
        if t.get("completed_at") is not None
        and _in_period(datetime.fromisoformat(str(t["completed_at"])), since, until)
    ]  # fmt: skip


def _in_period(at: datetime, since: datetime, until: datetime | None) -> bool:
    return since <= at and (until is None or at < until)


def enrolments_by_status(enrolments: Iterable[Change]) -> dict[str, dict[str, int]]:
    """{sequence: {status: n}}."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in enrolments:
        counts[str(item.get("sequence"))][str(item.get("status"))] += 1
    return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}


def exit_reasons(
    enrolments: Iterable[Change], since: datetime, until: datetime | None
) -> dict[str, dict[str, int]]:
    """{sequence: {exit reason: n}} of the enrolments that exited in [since, until) (until
    None: since `since`)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in enrolments:
        ended = item.get("ended_at")
        if item.get("status") != "exited" or ended is None:
            continue
        if _in_period(datetime.fromisoformat(str(ended)), since, until):
            counts[str(item.get("sequence"))][str(item.get("exit_reason"))] += 1
    return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}


def fetch_histories(
    client: ApiClient, since: datetime, bar: Progress, customers_total: int | None = None
) -> list[CustomerHistory]:
    """Every customer with the changes that occurred in the period (oldest first), counted
    on `bar` as they are read."""
    listing = client.paginate("scorer", "/v1/customers", {"limit": 500})
    customers = list(tracked(bar, listing, "customers", customers_total))
    in_period: dict[str, list[Change]] = defaultdict(list)
    # In UTC: an offset with seconds (+05:30:15) is a valid Python time the API refuses.
    utc = since.astimezone(UTC).isoformat()
    changes = client.paginate("scorer", "/v1/changes", {"since": utc, "limit": 500})
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


def collect_report(
    client: ApiClient, bar: Progress, *, since: datetime, now: datetime,
    until: datetime | None = None,
) -> Report:  # fmt: skip
    """Read the scorer and actions APIs and put the report together (each listing counted
    on `bar`: a report of many customers reads for a while). `until` None: the period ends
    now."""
    end = now if until is None else until
    stats = client.get("scorer", "/v1/stats/tiers")
    histories = fetch_histories(client, since, bar, int(stats.get("customers", 0)) or None)
    tasks = {"status": "open", "limit": 100}
    open_tasks = tracked(bar, client.paginate("actions", "/v1/tasks", tasks), "open tasks")
    overdue = tracked(
        bar,
        client.paginate("actions", "/v1/tasks", {**tasks, "overdue": "true"}),
        "overdue tasks",
    )
    done = tracked(
        bar, client.paginate("actions", "/v1/tasks", {"status": "done", "limit": 100}),
        "done tasks",
    )  # fmt: skip
    enrolments = list(tracked(
        bar, client.paginate("actions", "/v1/sequences/enrollments", {"limit": 100}), "enrolments"
    ))  # fmt: skip
    if until is None:
        distribution = {d: dict(stats.get(d, {})) for d in DIMENSIONS}
        customers = int(stats.get("customers", 0))
    else:
        distribution = distribution_at(histories, until)
        customers = sum(distribution["value_tier"].values())
    return Report(
        now=now.isoformat(),
        since=since.isoformat(),
        until=end.isoformat(),
        customers=customers,
        distribution=distribution,
        migration=period_migration(histories, "value_tier", since, until),
        churned=customers_moved_to(histories, "churned", since, until),
        reactivated=customers_moved_to(histories, "reactivated", since, until),
        tasks=tasks_per_queue(
            list(open_tasks), list(overdue), completed_between(done, since, until)
        ),
        enrolments=enrolments_by_status(enrolments),
        exit_reasons=exit_reasons(enrolments, since, until),
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
    table = Table(title=f"value tier migration, {_period(report)}")
    table.add_column("from \\ to", style="bold")
    for target in targets:
        table.add_column(target, justify="right")
    for source in ordered(report.migration):
        row = report.migration[source]
        table.add_row(source, *[str(row.get(t, 0)) for t in targets])
    return table


def _period(report: Report) -> str:
    return f"{report.since[:10]} to {report.until[:10]}"


def actions_tables(report: Report) -> list[Table]:
    """Lifecycle movements, tasks per queue, enrolments per sequence and status, and the
    exit reasons of the enrolments that exited."""
    moves = Table(title=f"lifecycle, {_period(report)}")
    moves.add_column("moved to")
    moves.add_column("customers", justify="right")
    moves.add_row("churned", str(report.churned))
    moves.add_row("reactivated", str(report.reactivated))
    tasks = Table(title=f"tasks per queue (open now; done {_period(report)})")
    for column in ("queue", "open", "overdue", "done", "done late"):
        tasks.add_column(column, justify="left" if column == "queue" else "right")
    for queue, counts in report.tasks.items():
        tasks.add_row(queue, *[str(counts[k]) for k in ("open", "overdue", "done", "done_late")])
    statuses = sorted({s for c in report.enrolments.values() for s in c})
    enrolled = Table(title="sequence enrolments by status")
    enrolled.add_column("sequence")
    for status in statuses:
        enrolled.add_column(status, justify="right")
    for sequence, counts in report.enrolments.items():
        enrolled.add_row(sequence, *[str(counts.get(s, 0)) for s in statuses])
    exits = Table(title=f"sequence exits by reason, {_period(report)}")
    for column in ("sequence", "reason", "enrolments"):
        exits.add_column(column, justify="right" if column == "enrolments" else "left")
    for sequence, reasons in report.exit_reasons.items():
        for i, (reason, n) in enumerate(reasons.items()):
            exits.add_row(sequence if i == 0 else "", reason, str(n))
    return [moves, tasks, enrolled, exits]


def run_report(
    since: datetime | None, plot: Path | None, as_json: bool, console: Console,
    until: datetime | None = None,
) -> int:  # fmt: skip
    """Collect, print (tables or JSON) and optionally plot; the exit code."""
    try:
        now = reference_now()
        endpoints = Endpoints.from_env()
    except ConfigError as exc:
        console.print(f"[red]invalid configuration:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    end = until or now
    start = since or end - timedelta(days=30)
    if problem := _period_problem(start, end, now):
        console.print(f"[red]invalid period:[/red] {problem}", soft_wrap=True)
        return 2
    try:
        with (
            ApiClient(endpoints, retry_for=0) as client,
            progress_bar(console, transient=True) as bar,
        ):
            report = collect_report(client, bar, since=start, now=now, until=until)
    except ApiError as exc:
        console.print(f"[red]cannot read the APIs:[/red] {escape(str(exc))}", soft_wrap=True)
        return 1
    out = Console()
    if as_json:
        out.print_json(json.dumps(asdict(report)))
    else:
        for table in (distribution_table(report), migration_table(report), *actions_tables(report)):
            out.print(table)
    return 0 if plot is None else _plot(report, plot, console)


def _period_problem(since: datetime, until: datetime, now: datetime) -> str | None:
    """Why [since, until) is no period to report on (None: it is one)."""
    if until > now:
        return f"--until {until.isoformat()} is after now ({now.isoformat()})"
    if since >= until:
        return f"--since {since.isoformat()} is not before the period's end {until.isoformat()}"
    return None


def _plot(report: Report, path: Path, console: Console) -> int:
    from cli.plots import plot_report

    title = f"Tierstream: {report.customers} customers, {_period(report)}"
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
        line = f"[red]cannot write {escape(str(path))}:[/red] {exc.strerror or exc}"
        console.print(line, soft_wrap=True)  # one line however long: scripts grep it
        return 1
    console.print(f"wrote {path}")
    return 0
