"""The user's CLI against the real system: ingest + scorer + actions, broker and Postgres.

The three services run in-process on one background event loop (their `run(settings,
stop=...)`), shared by this module's tests; each test uses its own customers. The CLI runs
as its own process with the TIERSTREAM_* variables a user would set.
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import matplotlib.image
import pytest

from cli.api_client import ApiClient
from cli.csv_import import Checkpoint, checkpoint_path, input_fingerprint, save_checkpoint
from shared.embedded import free_port
from tests.support.infra import fresh_database, unique_namespace

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEY = "cli-key"
# How long `import` keeps retrying a send that reached no ingest (the client's default).
IMPORT_RETRY_S = float(inspect.signature(ApiClient).parameters["retry_for"].default)
T = TypeVar("T")


@dataclass
class System:
    """The three services on a background loop, and how the CLI reaches them."""

    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    database_url: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def get(self, service: str, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {KEY}"}
        response = httpx.get(f"{self.url(service)}{path}", params=params, headers=headers)
        response.raise_for_status()
        return response.json()

    def items(self, service: str, path: str, **params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        query = {"limit": 500, **params}
        while True:
            page = self.get(service, path, **query)
            found += page["items"]
            if not page["next_cursor"]:
                return found
            query["cursor"] = page["next_cursor"]


async def _serve(system: System, kafka: str, pg_server: str) -> None:
    from services.actions.main import run as run_actions
    from services.actions.settings import ActionsSettings
    from services.ingest.main import run as run_ingest
    from services.ingest.settings import IngestSettings
    from services.scorer.main import run as run_scorer
    from services.scorer.settings import ScorerSettings
    from shared.migrations import upgrade

    system.loop, system.stop = asyncio.get_running_loop(), asyncio.Event()
    async with fresh_database(pg_server) as database_url:
        system.database_url = database_url
        await asyncio.to_thread(upgrade, database_url, "scorer")
        env: dict[str, Any] = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka, "DATABASE_URL": database_url,
            "TIERSTREAM_TOPIC_NAMESPACE": unique_namespace(), "TIERSTREAM_PARTITIONS": "3",
            "KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_REQUEST_TIMEOUT_MS": "5000",
            "TIERSTREAM_API_KEYS": f"cli:{KEY}", "now": NOW,
        }  # fmt: skip
        fast: dict[str, Any] = {"poll_timeout_ms": 100}
        await asyncio.gather(
            run_ingest(IngestSettings(**env, port=system.ports["ingest"]), stop=system.stop),
            run_scorer(
                ScorerSettings(**env, **fast, port=system.ports["scorer"], relay_interval_s=0.1),
                stop=system.stop,
            ),
            run_actions(
                ActionsSettings(**env, **fast, port=system.ports["actions"]), stop=system.stop
            ),
        )


def _thread_main(system: System, kafka: str, pg_server: str) -> None:
    try:
        asyncio.run(_serve(system, kafka, pg_server))
    except BaseException as exc:
        system.error = exc


def _ready(system: System) -> bool:
    try:
        return all(
            httpx.get(f"{system.url(s)}/readyz", timeout=2).status_code == 200 for s in system.ports
        )
    except httpx.HTTPError:
        return False


def poll(fn: Callable[[], T | None], what: str, timeout: float = 40.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def system(kafka_bootstrap: str, pg_server_url: str) -> Iterator[System]:
    ports = {name: free_port() for name in ("ingest", "scorer", "actions")}
    system = System(ports)
    thread = threading.Thread(
        target=_thread_main, args=(system, kafka_bootstrap, pg_server_url), daemon=True
    )
    thread.start()
    poll(lambda: system.error is not None or _ready(system), "the services to be ready", 60)
    assert system.error is None, system.error
    system.env = {
        **{f"TIERSTREAM_{s.upper()}_URL": system.url(s) for s in ports},
        "TIERSTREAM_API_KEY": KEY,
        "TIERSTREAM_NOW": NOW.isoformat(),
        "DATABASE_URL": system.database_url,  # `rules diff` reads the scorer's tables
    }
    yield system
    if system.loop is not None and system.stop is not None:
        system.loop.call_soon_threadsafe(system.stop.set)
    thread.join(30)


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    output: str  # stdout and stderr

    @property
    def stderr(self) -> str:
        return self.output[len(self.stdout) :]


def cli(
    system: System, *args: str, env: dict[str, str] | None = None, hang_s: float = 120.0
) -> Ran:
    """`tierstream ARGS` as a user runs it: its own process, configured by environment.
    Fails the test if the command is still running after `hang_s` (a hang detector)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, **system.env, "COLUMNS": "200", **(env or {})},
            capture_output=True,
            text=True,
            timeout=hang_s,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"tierstream {' '.join(args)} still running after {hang_s}s") from None
    return Ran(done.returncode, done.stdout, done.stdout + done.stderr)


def customer(system: System, customer_id: str) -> dict[str, Any] | None:
    response = httpx.get(
        f"{system.url('scorer')}/v1/customers/{customer_id}",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    return response.json() if response.status_code == 200 else None


def orders_reach(system: System, expected: dict[str, int]) -> Callable[[], dict[str, int] | None]:
    def check() -> dict[str, int] | None:
        seen = {c: (customer(system, c) or {}).get("lifetime_orders") for c in expected}
        return expected if seen == expected else None

    return check


PURCHASES = """Kunde,occurred_at,order_id,amount,currency
imp-a,2026-05-01,a1,100.00,EUR
imp-a,20260510,a2,250.00,EUR
imp-b,2026-05-11T10:00:00Z,b1,80,EUR
imp-b,2026-13-01,b2,10,EUR
imp-a,2026-05-12,a3,-5,EUR

imp-a,2026-07-01,a4,60,EUR
imp-b,2026-05-20,b3,40.5,EUR
imp-b,2026-05-21,b4
,2026-05-22,c1,10,EUR
imp-a,2026-05-25T08:00:00+02:00,a5,99.99,EUR
"""
REJECTED_LINES = ["5", "6", "8", "10", "11"]


def rejects_of(path: Path) -> list[list[str]]:
    with path.with_name(path.name + ".rejects.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def test_import_rejects_bad_rows_by_line_and_counts_the_rest_once(
    system: System, tmp_path: Path
) -> None:
    source = tmp_path / "purchases.csv"
    source.write_text(PURCHASES)
    args = ("import", str(source), "--type", "purchase", "--column", "customer_id=Kunde")
    first = cli(system, *args, "--batch-size", "4")
    assert first.exit_code == 3, first.output  # finished, some rows rejected
    rejects = rejects_of(source)
    assert rejects[0][:3] == ["line", "reason", "Kunde"]
    assert [r[0] for r in rejects[1:]] == REJECTED_LINES
    reasons = {r[0]: r[1] for r in rejects[1:]}
    assert "occurred_at" in reasons["5"] and "amount" in reasons["6"]
    assert reasons["8"].startswith("ingest: occurred_at")  # only ingest knows its clock
    assert reasons["10"] == "3 fields, the header has 5"
    assert "customer_id" in reasons["11"]
    assert not checkpoint_path(source).exists()
    poll(orders_reach(system, {"imp-a": 3, "imp-b": 2}), "the imported orders")
    assert (customer(system, "imp-a") or {})["lifetime_spend"] == pytest.approx(449.99)

    again = cli(system, *args)
    assert again.exit_code == 3, again.output
    assert rejects_of(source) == rejects
    more = tmp_path / "more.csv"
    more.write_text("Kunde,occurred_at,order_id,amount,currency\nimp-a,2026-05-30,a6,1,EUR\n")
    later = cli(system, "import", str(more), "--type", "purchase", "--column", "customer_id=Kunde")
    assert later.exit_code == 0, later.output
    assert not (tmp_path / "more.csv.rejects.csv").exists()
    # same partition as the re-import, so it is counted after the duplicates were dropped
    poll(orders_reach(system, {"imp-a": 4, "imp-b": 2}), "the later order, and no duplicate")


def test_an_interrupted_import_resumes_after_its_checkpoint(system: System, tmp_path: Path) -> None:
    source = tmp_path / "logins.csv"
    lines = [f"res-x,2026-05-{day}T09:00:00Z,web" for day in range(10, 16)]
    source.write_text("customer_id,occurred_at,channel\n" + "\n".join(lines) + "\n")
    save_checkpoint(
        checkpoint_path(source), Checkpoint(4, input_fingerprint(source, "login", {}))
    )  # as if a run died after ingest acknowledged lines 2-4
    result = cli(system, "import", str(source), "--type", "login")
    assert result.exit_code == 0, result.output
    assert "resumed after line" in result.output
    assert not checkpoint_path(source).exists()
    sentinel = tmp_path / "sentinel.csv"
    sentinel.write_text("customer_id,occurred_at,channel\nres-x,2026-05-20,app\n")
    assert cli(system, "import", str(sentinel), "--type", "login").exit_code == 0

    def after_sentinel() -> dict[str, Any] | None:
        state = customer(system, "res-x") or {}
        return state if str(state.get("last_login_at")).startswith("2026-05-20") else None

    assert poll(after_sentinel, "res-x's logins")["logins_30d"] == 4  # lines 5-7 + sentinel


def test_an_import_over_the_body_limit_is_split_and_cells_over_128_kib_are_read(
    system: System, tmp_path: Path
) -> None:
    items = json.dumps([{"sku": f"{i:04d}" + "s" * 250} for i in range(1000)])  # ~260 KB
    assert 128 * 1024 < len(items) < 1024 * 1024
    quoted = '"' + items.replace('"', '""') + '"'
    rows = [f"big-a,2026-05-{10 + i},big-o{i},{10 + i},EUR,{quoted}" for i in range(5)]
    source = tmp_path / "big.csv"  # five rows, together over ingest's 1 MiB body limit
    source.write_text("customer_id,occurred_at,order_id,amount,currency,items\n" + "\n".join(rows))
    result = cli(system, "import", str(source), "--type", "purchase")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "big.csv.rejects.csv").exists()
    poll(orders_reach(system, {"big-a": 5}), "the five large orders")


def test_import_exit_codes_say_what_to_do(system: System, tmp_path: Path) -> None:
    source = tmp_path / "logins.csv"
    source.write_text("customer_id,occurred_at,channel\ncode-a,2026-05-10,web\n")
    args = ("import", str(source), "--type", "login")

    missing = cli(system, "import", str(tmp_path / "nope.csv"), "--type", "login")
    assert missing.exit_code == 2, missing.output  # a usage error, not "some rows rejected"
    refused = cli(system, *args, env={"TIERSTREAM_API_KEY": "not-the-key"})
    assert refused.exit_code == 4, refused.output
    assert "API key was refused" in refused.output and "resume" not in refused.output
    no_scheme = system.url("ingest").removeprefix("http://")
    # At once, not after the retry window: a CLI that retried the unusable URL would still be
    # retrying when this hang detector (half the window, many CLI starts) stops it.
    unusable = cli(
        system, *args, env={"TIERSTREAM_INGEST_URL": no_scheme}, hang_s=IMPORT_RETRY_S / 2
    )
    assert unusable.exit_code == 4, unusable.output
    assert "TIERSTREAM_INGEST_URL" in unusable.output and "http://host:port" in unusable.output
    assert "unavailable" not in unusable.output  # no retry ran out: none was made

    broken = tmp_path / "broken.csv"
    broken.write_text(
        "customer_id,occurred_at,channel\ncode-a,2026-05-11,web\n"
        f'code-a,2026-05-12,"{"x" * (1024 * 1024 + 1)}"\n'
    )
    unreadable = cli(system, "import", str(broken), "--type", "login")
    assert unreadable.exit_code == 4, unreadable.output
    assert "line 3: unreadable CSV" in unreadable.output
    assert "Traceback" not in unreadable.output
    assert cli(system, *args).exit_code == 0


@pytest.fixture
def latin1_rules(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# r\xe9gles\nversion: 1\n".encode("latin-1"))
    return path


FAILURES = {
    "rules check, not UTF-8": (("rules", "check", "{latin1}"), {}, "not UTF-8 text"),
    "rules diff, not UTF-8": (("rules", "diff", "{latin1}"), {}, "not UTF-8 text"),
    "simulate, no such directory": (
        ("simulate", "--dry-run", "--customers", "2", "--output", "/nonexistent/x.jsonl"),
        {},
        "cannot write /nonexistent/x.jsonl: No such file or directory",
    ),
    "report, no such directory": (
        ("report", "--plot", "/nonexistent/x.png"),
        {},
        "cannot write /nonexistent/x.png: No such file or directory",
    ),
    "rules diff, no such directory": (
        ("rules", "diff", "{rules}", "--plot", "/nonexistent/d.png"),
        {},
        "cannot write /nonexistent/d.png: No such file or directory",
    ),
    "rules diff, database unreachable": (
        ("rules", "diff", "{rules}"),
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:{closed}/nowhere"},
        "cannot read today's customers from postgresql://postgres@127.0.0.1:",
    ),
    "migrate, database unreachable": (
        ("migrate",),
        {"DATABASE_URL": "postgresql://postgres:secret@127.0.0.1:{closed}/nowhere"},
        "cannot migrate postgresql://postgres:***@127.0.0.1:",
    ),
    "rules diff, database not migrated": (
        ("rules", "diff", "{rules}"),
        {"DATABASE_URL": "{empty_database}"},
        "run `tierstream migrate`",
    ),
}


# A bad setting: exit 2, as for every other (report said 1).
BAD_SETTINGS = {
    "simulate, bad TIERSTREAM_NOW": (
        ("simulate", "--dry-run", "--customers", "2"),
        {"TIERSTREAM_NOW": "tomorrow"},
        "TIERSTREAM_NOW='tomorrow' is not an ISO 8601 time with a timezone",
    ),
    "report, bad TIERSTREAM_NOW": (
        ("report",),
        {"TIERSTREAM_NOW": "2026-06-01T12:00:00"},
        "is not an ISO 8601 time with a timezone",
    ),
}


@pytest.mark.parametrize(
    ("args", "env", "says", "code"),
    [*((*case, 1) for case in FAILURES.values()), *((*case, 2) for case in BAD_SETTINGS.values())],
    ids=[*FAILURES, *BAD_SETTINGS],
)
def test_a_command_that_cannot_go_on_says_why_in_one_line(
    system: System,
    latin1_rules: Path,
    database_url: str,
    args: tuple[str, ...],
    env: dict[str, str],
    says: str,
    code: int,
) -> None:
    from shared.domain.rules import default_rules_path

    values = {
        "latin1": str(latin1_rules),
        "rules": str(default_rules_path()),
        "closed": str(free_port()),
        "empty_database": database_url,  # a fresh database: no scorer tables
    }
    result = cli(
        system,
        *(a.format(**values) for a in args),
        env={k: v.format(**values) for k, v in env.items()},
    )
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def dry_run(system: System, tmp_path: Path, name: str, *args: str) -> list[dict[str, Any]]:
    out = tmp_path / name
    result = cli(system, "simulate", "--dry-run", "--output", str(out), *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_simulate_is_deterministic_and_its_population_lands_in_the_scorer(
    system: System, tmp_path: Path
) -> None:
    args = ("--customers", "25", "--days", "120", "--seed", "5", "--prefix", "sim-")
    planned = dry_run(system, tmp_path, "a.jsonl", *args)
    assert planned == dry_run(system, tmp_path, "b.jsonl", *args)
    other = dry_run(system, tmp_path, "c.jsonl", *args[:-3], "6", "--prefix", "sim-")
    assert [e["occurred_at"] for e in other] != [e["occurred_at"] for e in planned]

    sent = cli(system, "simulate", *args, "--batch-size", "100")
    assert sent.exit_code == 0, sent.output
    assert "accepted by ingest" in sent.output
    people = {e["customer_id"] for e in planned}
    orders = Counter(e["customer_id"] for e in planned if e["type"] == "purchase")

    def landed() -> dict[str, int] | None:
        found = {
            c["customer_id"]: c["lifetime_orders"] for c in system.items("scorer", "/v1/customers")
        }
        mine = {c: n for c, n in found.items() if c.startswith("sim-")}
        return mine if mine == {c: orders[c] for c in people} else None

    poll(landed, "every simulated customer with its orders")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def api_numbers(system: System, since: datetime) -> dict[str, Any]:
    """What the report must say, read straight from the APIs."""
    stats = system.get("scorer", "/v1/stats/tiers")
    moved: Counter[str] = Counter()
    for c in system.items("scorer", "/v1/customers"):
        changes = system.items("scorer", f"/v1/customers/{c['customer_id']}/changes")
        moved.update(
            {ch["to"] for ch in changes if ch["dimension"] == "lifecycle_stage"
             and datetime.fromisoformat(ch["occurred_at"]) >= since}
        )  # fmt: skip
    open_tasks = Counter(t["queue"] for t in system.items("actions", "/v1/tasks", status="open"))
    overdue = Counter(
        t["queue"] for t in system.items("actions", "/v1/tasks", status="open", overdue="true")
    )
    done = [t for t in system.items("actions", "/v1/tasks", status="done")
            if datetime.fromisoformat(t["completed_at"]) >= since]  # fmt: skip
    finished = Counter(t["queue"] for t in done)
    late = Counter(t["queue"] for t in done if t["completed_at"] > t["due_at"])
    enrolled: dict[str, Counter[str]] = {}
    for e in system.items("actions", "/v1/sequences/enrollments"):
        enrolled.setdefault(e["sequence"], Counter())[e["status"]] += 1
    queues = set(open_tasks) | set(overdue) | set(finished)
    return {
        "customers": stats["customers"],
        "distribution": {d: stats[d] for d in ("value_tier", "activity_level", "lifecycle_stage")},
        "churned": moved["churned"],
        "reactivated": moved["reactivated"],
        "tasks": {
            q: {
                "open": open_tasks[q],
                "overdue": overdue[q],
                "done": finished[q],
                "done_late": late[q],
            }
            for q in queues
        },
        "enrolments": {s: dict(c) for s, c in enrolled.items()},
    }


def tiers_at(system: System, at: datetime) -> dict[str, int]:
    """Customers per value tier at `at`, from each customer's own whole history (not the
    feed's changes in a period): the last change before `at` in the order they were made."""
    tiers: Counter[str] = Counter()
    for c in system.items("scorer", "/v1/customers"):
        changes = [ch for ch in system.items("scorer", f"/v1/customers/{c['customer_id']}/changes")
                   if ch["dimension"] == "value_tier"]  # fmt: skip
        before = [ch for ch in changes if datetime.fromisoformat(ch["occurred_at"]) < at]
        tier = before[-1]["to"] if before else None
        if tier is not None:
            tiers[tier] += 1
    return dict(tiers)


def report_json(system: System, *args: str) -> dict[str, Any]:
    result = cli(system, "report", "--json", *args)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_report_numbers_equal_the_apis_and_the_plot_is_a_png(
    system: System, tmp_path: Path
) -> None:
    vip = tmp_path / "vip.csv"
    days = [(NOW - timedelta(days=45 - 4.5 * i)).isoformat() for i in range(10)]
    rows = [f"rep-vip,{day},v{i},1000,EUR" for i, day in enumerate(days)]
    vip.write_text("customer_id,occurred_at,order_id,amount,currency\n" + "\n".join(rows) + "\n")
    imported = cli(system, "import", str(vip), "--type", "purchase")
    assert imported.exit_code == 0, imported.output
    args = ("--customers", "30", "--days", "200", "--seed", "9", "--prefix", "rep-")
    simulated = cli(system, "simulate", *args)
    assert simulated.exit_code == 0, simulated.output
    poll(lambda: system.items("actions", "/v1/tasks", customer_id="rep-vip"), "the VIP's task")

    since = datetime(2026, 5, 1, tzinfo=UTC)
    keys = ("customers", "distribution", "churned", "reactivated", "tasks", "enrolments")

    previous: list[dict[str, Any]] = []

    def rested() -> dict[str, Any] | None:
        """The report once it equals the APIs and the previous look: the simulated events
        may still be moving through the scorer and actions (an agreement in one look can
        fall between two of their batches, and the looks below would then disagree)."""
        report = report_json(system, "--since", "2026-05-01")
        numbers = {k: report[k] for k in keys}
        settled = numbers == api_numbers(system, since) and previous[-1:] == [numbers]
        previous.append(numbers)
        return report if settled else None

    report = poll(rested, "the report to equal the APIs twice in a row", timeout=90)
    assert report["distribution"]["value_tier"]["gold"] >= 1
    assert sum(q["open"] for q in report["tasks"].values()) >= 1
    assert report["enrolments"]
    columns: Counter[str] = Counter()
    for row in report["migration"].values():
        columns.update(row)
    assert dict(columns) == {k: v for k, v in report["distribution"]["value_tier"].items() if v}
    # A period that ended before now: the classes as they were at its end.
    ended = report_json(system, "--since", "2026-04-01", "--until", "2026-05-01")
    assert ended["until"].startswith("2026-05-01")
    assert {k: v for k, v in ended["distribution"]["value_tier"].items() if v} == tiers_at(
        system, since
    )
    # An offset with seconds is a valid time the API's `since` refuses: sent in UTC.
    odd = report_json(system, "--since", "2026-05-01T05:30:15+05:30:15")
    assert {k: odd[k] for k in keys} == {k: report[k] for k in keys}
    everything = report_json(system, "--since", "2000-01-01")
    for source, row in everything["migration"].items():  # before any event: only first moves
        assert all(source in ("(unclassified)", target) for target in row), everything

    picture = tmp_path / "report.png"
    shown = cli(system, "report", "--since", "2026-05-01", "--plot", str(picture))
    assert shown.exit_code == 0, shown.output
    assert "value tier migration" in shown.stdout and "tasks per queue" in shown.stdout
    assert "sequence exits by reason" in shown.stdout
    assert picture.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(picture).shape[:2] == (950, 1300)


def printed_matrix(stdout: str, title: str) -> dict[str, dict[str, int]]:
    """A from -> to table as the CLI printed it (rich box drawing)."""
    lines = iter(stdout.splitlines())
    next(line for line in lines if line.strip() == title)
    header = [c.strip() for c in next(line for line in lines if "from" in line).split("┃")[2:-1]]
    matrix: dict[str, dict[str, int]] = {}
    for line in lines:
        if line.startswith("└"):
            return matrix
        if line.startswith("│"):
            source, *counts = (c.strip() for c in line.split("│")[1:-1])
            matrix[source] = dict(zip(header, map(int, counts), strict=True))
    raise AssertionError(f"no complete {title} table in {stdout!r}")


def test_rules_check_and_diff_show_a_candidate_and_plot_its_migrations(
    system: System, tmp_path: Path
) -> None:
    from shared.domain.rules import default_rules_path

    buyer = tmp_path / "silver.csv"
    rows = [
        f"diff-s,{(NOW - timedelta(days=10 * i + 1)).isoformat()},s{i},300,EUR" for i in range(5)
    ]
    buyer.write_text("customer_id,occurred_at,order_id,amount,currency\n" + "\n".join(rows) + "\n")
    assert cli(system, "import", str(buyer), "--type", "purchase").exit_code == 0
    poll(lambda: (customer(system, "diff-s") or {}).get("value_tier") == "silver", "diff-s")

    text = default_rules_path().read_text()
    gold = "{feature: m_score, op: ge, value: 4}\n          - {feature: f_score, op: ge, value: 4}"
    assert gold in text
    easier = tmp_path / "easier.yaml"
    easier.write_text(text.replace(gold, gold.replace("value: 4", "value: 2")))
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("then: gold", "then: platinum"))

    checked = cli(system, "rules", "check", str(easier))
    assert checked.exit_code == 0, checked.output
    assert "m_score >= 2 and f_score >= 2 and days_since_last_purchase <= 90" in checked.stdout
    refused = cli(system, "rules", "check", str(broken))
    assert refused.exit_code == 1
    assert "platinum" in refused.output and "gold" in refused.output

    picture = tmp_path / "diff.png"
    diffed = cli(system, "rules", "diff", str(easier), "--plot", str(picture))
    assert diffed.exit_code == 0, diffed.output
    tiers = printed_matrix(diffed.stdout, "value_tier")
    assert tiers["silver"]["gold"] >= 1  # diff-s, at least, would be promoted
    assert all(n == 0 for to, n in tiers.get("gold", {}).items() if to != "gold")  # easier gold
    stats = system.get("scorer", "/v1/stats/tiers")
    for dimension in ("value_tier", "activity_level", "lifecycle_stage"):
        matrix = printed_matrix(diffed.stdout, dimension)
        assert sum(sum(row.values()) for row in matrix.values()) == stats["customers"]
    assert picture.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(picture).shape[:2] == (550, 1800)
    plain = cli(system, "rules", "diff", str(easier))
    assert plain.exit_code == 0 and plain.stdout == diffed.stdout
