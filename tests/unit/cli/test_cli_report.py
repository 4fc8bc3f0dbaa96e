"""The report's arithmetic: period migration, churn and reactivation, tasks, enrolments."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.plots import matrix_axes, ordered, plot_report, plot_rules_diff
from cli.report import (
    CustomerHistory,
    class_at,
    completed_between,
    customers_moved_to,
    distribution_at,
    enrolments_by_status,
    exit_reasons,
    period_migration,
    start_class,
    tasks_per_queue,
)
from shared.embedded import free_port

SINCE = datetime(2026, 5, 1, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def change(dimension: str, before: str | None, after: str, day: str) -> dict[str, Any]:
    return {"dimension": dimension, "from": before, "to": after, "occurred_at": f"{day}T00:00:00Z"}


def customer(cid: str, tier: str, *changes: dict[str, Any], stage: str = "new") -> CustomerHistory:
    classes = {"value_tier": tier, "activity_level": "active", "lifecycle_stage": stage}
    return CustomerHistory(cid, classes, list(changes))


HISTORIES = [
    # moved bronze -> silver -> gold inside the period: counts once, bronze -> gold
    customer(
        "a",
        "gold",
        change("value_tier", None, "bronze", "2026-01-01"),
        change("value_tier", "bronze", "silver", "2026-05-03"),
        change("value_tier", "silver", "gold", "2026-05-20"),
    ),
    # changed before the period only: stays on the diagonal
    customer("b", "silver", change("value_tier", None, "silver", "2026-02-01")),
    # first classified inside the period
    customer(
        "c",
        "bronze",
        change("value_tier", None, "bronze", "2026-05-10"),
        change("lifecycle_stage", "at_risk", "reactivated", "2026-05-11"),
        stage="reactivated",
    ),
    customer(
        "d",
        "bronze",
        change("lifecycle_stage", "at_risk", "churned", "2026-04-30"),
        change("lifecycle_stage", "churned", "reactivated", "2026-05-02"),
        change("lifecycle_stage", "reactivated", "churned", "2026-05-25"),
        stage="churned",
    ),
]


def test_a_customer_starts_the_period_in_the_from_class_of_its_first_change_in_it() -> None:
    assert start_class(HISTORIES[0], "value_tier", SINCE) == "bronze"
    assert start_class(HISTORIES[1], "value_tier", SINCE) == "silver"
    assert start_class(HISTORIES[2], "value_tier", SINCE) is None


def test_the_migration_matrix_pairs_start_and_current_classes() -> None:
    assert period_migration(HISTORIES, "value_tier", SINCE) == {
        "(unclassified)": {"bronze": 1},
        "bronze": {"bronze": 1, "gold": 1},
        "silver": {"silver": 1},
    }


def test_churn_and_reactivation_count_customers_who_moved_there_in_the_period() -> None:
    assert customers_moved_to(HISTORIES, "churned", SINCE) == 1
    assert customers_moved_to(HISTORIES, "reactivated", SINCE) == 2
    assert customers_moved_to(HISTORIES, "churned", datetime(2026, 4, 1, tzinfo=UTC)) == 1


def test_a_period_can_end_before_now_and_the_classes_are_read_as_they_were_then() -> None:
    until = datetime(2026, 5, 15, tzinfo=UTC)
    # a: bronze at the start, silver on the 15th (gold only on the 20th); b: silver all
    # along; c: first classified inside; d: classified on no value-tier change, so as now.
    assert [class_at(h, "value_tier", until) for h in HISTORIES] == [
        "silver", "silver", "bronze", "bronze",
    ]  # fmt: skip
    assert class_at(HISTORIES[2], "value_tier", datetime(2026, 5, 9, tzinfo=UTC)) is None
    assert period_migration(HISTORIES, "value_tier", SINCE, until) == {
        "(unclassified)": {"bronze": 1},
        "bronze": {"bronze": 1, "silver": 1},
        "silver": {"silver": 1},
    }
    assert distribution_at(HISTORIES, until)["value_tier"] == {"silver": 2, "bronze": 2}
    assert distribution_at(HISTORIES, datetime(2026, 5, 5, tzinfo=UTC))["value_tier"] == {
        "silver": 2, "bronze": 1,  # c not yet classified
    }  # fmt: skip
    # d churned again only on the 25th, after the period
    assert customers_moved_to(HISTORIES, "churned", SINCE, until) == 0
    assert customers_moved_to(HISTORIES, "reactivated", SINCE, until) == 2


def test_changes_are_read_in_the_order_they_were_published_not_by_their_dates() -> None:
    # A late event's change is published after a change dated later than it: gold until a
    # time-driven downgrade on the 30th, then a purchase of the 25th, read late, kept it gold.
    # Read by date, the customer started the period silver and counted silver -> gold.
    kept = customer(
        "g2s", "gold",
        change("value_tier", None, "gold", "2026-03-01"),
        change("value_tier", "gold", "silver", "2026-05-30"),
        change("value_tier", "silver", "gold", "2026-05-25"),
    )  # fmt: skip
    in_period = CustomerHistory("g2s", kept.classes, kept.changes[1:])  # as the feed gives
    assert class_at(in_period, "value_tier", SINCE) == "gold"
    assert class_at(in_period, "value_tier", datetime(2026, 5, 28, tzinfo=UTC)) == "gold"
    assert period_migration([in_period], "value_tier", SINCE) == {"gold": {"gold": 1}}
    until = datetime(2026, 5, 28, tzinfo=UTC)
    assert period_migration([in_period], "value_tier", SINCE, until) == {"gold": {"gold": 1}}
    # First seen on the 5th, then a purchase of the 3rd read late: unclassified before the
    # 3rd, and what the later knowledge says after it.
    late = customer(
        "q", "silver",
        change("value_tier", None, "bronze", "2026-05-05"),
        change("value_tier", "bronze", "silver", "2026-05-03"),
    )  # fmt: skip
    assert class_at(late, "value_tier", datetime(2026, 5, 2, tzinfo=UTC)) is None
    assert class_at(late, "value_tier", datetime(2026, 5, 4, tzinfo=UTC)) == "silver"


def test_tasks_are_counted_per_queue_with_the_ones_done_late() -> None:
    open_tasks = [{"queue": "support"}, {"queue": "support"}, {"queue": "senior-sales"}]
    done = [
        {
            "queue": "support",
            "due_at": "2026-05-02T00:00:00Z",
            "completed_at": "2026-05-01T09:00:00Z",
        },
        {
            "queue": "support",
            "due_at": "2026-05-02T00:00:00Z",
            "completed_at": "2026-05-10T09:00:00Z",
        },
        {"queue": "care", "due_at": "2026-05-02T00:00:00Z", "completed_at": "2026-05-02T00:00:00Z"},
    ]
    assert tasks_per_queue(open_tasks, [{"queue": "support"}], done) == {
        "care": {"open": 0, "overdue": 0, "done": 1, "done_late": 0},  # on the dot is on time
        "senior-sales": {"open": 1, "overdue": 0, "done": 0, "done_late": 0},
        "support": {"open": 2, "overdue": 1, "done": 2, "done_late": 1},
    }
    in_may = completed_between(done, SINCE, datetime(2026, 5, 10, tzinfo=UTC))
    assert len(in_may) == 2  # the 10th is the period's end, not in it
    # A period without an end (the default) takes everything since its start, as the
    # classes do: under a fixed TIERSTREAM_NOW every completion is stamped now itself.
    assert len(completed_between(done, SINCE, None)) == 3


def test_exits_in_the_period_are_counted_per_sequence_and_reason() -> None:
    def exited(sequence: str, reason: str, day: str) -> dict[str, Any]:
        return {"sequence": sequence, "status": "exited", "exit_reason": reason,
                "ended_at": f"{day}T00:00:00Z"}  # fmt: skip

    items: list[dict[str, Any]] = [
        exited("win_back", "goal:purchase", "2026-05-02"),
        exited("win_back", "goal:purchase", "2026-05-09"),
        exited("welcome", "lifecycle_stage:at_risk", "2026-05-03"),
        exited("welcome", "lifecycle_stage:at_risk", "2026-06-03"),  # after the period
        exited("welcome", "lifecycle_stage:churned", "2026-04-03"),  # before it
        {"sequence": "welcome", "status": "completed", "exit_reason": None, "ended_at": None},
    ]
    assert exit_reasons(items, SINCE, datetime(2026, 6, 1, tzinfo=UTC)) == {
        "welcome": {"lifecycle_stage:at_risk": 1}, "win_back": {"goal:purchase": 2},
    }  # fmt: skip
    assert exit_reasons(items, SINCE, None)["welcome"] == {"lifecycle_stage:at_risk": 2}


@pytest.mark.parametrize(
    ("since", "until", "problem"),
    [
        ("2026-05-10", "2026-05-10", "not before the period's end"),
        ("2026-05-11", "2026-05-10", "not before the period's end"),
        ("2026-05-01", "2026-07-01", "after now"),
    ],
)
def test_a_period_that_is_empty_or_ends_after_now_is_refused(
    since: str, until: str, problem: str
) -> None:
    result = CliRunner().invoke(
        app, ["report", "--since", since, "--until", until],
        env={"TIERSTREAM_NOW": "2026-06-01T00:00:00Z"},
    )  # fmt: skip
    assert result.exit_code == 2 and problem in result.output, result.output


def test_enrolments_are_counted_per_sequence_and_status() -> None:
    items = [
        {"sequence": "welcome", "status": "active"},
        {"sequence": "welcome", "status": "exited"},
        {"sequence": "welcome", "status": "active"},
        {"sequence": "win_back", "status": "completed"},
    ]
    assert enrolments_by_status(items) == {
        "welcome": {"active": 2, "exited": 1},
        "win_back": {"completed": 1},
    }


def test_classes_are_shown_in_business_order() -> None:
    assert ordered(["none", "bronze", "gold", "vip", "silver"]) == [
        "gold", "silver", "bronze", "none", "vip",
    ]  # fmt: skip
    rows, cols, grid = matrix_axes({"silver": {"gold": 2}, "gold": {"bronze": 1, "silver": 3}})
    assert rows == cols == ["gold", "silver", "bronze"]
    assert grid == [[0, 3, 1], [2, 0, 0], [0, 0, 0]]
    rows, cols, grid = matrix_axes({"(unclassified)": {"gold": 2}, "gold": {"gold": 1}})
    assert (rows, cols, grid) == (["(unclassified)", "gold"], ["gold"], [[2], [1]])


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300


def test_the_report_picture_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    distribution = {
        "value_tier": {"gold": 2, "silver": 5, "bronze": 9, "none": 4},
        "activity_level": {"active": 10, "inactive": 10},
        "lifecycle_stage": {"new": 3, "established": 12, "at_risk": 5},
    }
    plot_report(distribution, period_migration(HISTORIES, "value_tier", SINCE), path, title="t")
    assert_png(path)


def test_the_rules_diff_picture_is_a_png_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "diff.png"
    plot_rules_diff({"value_tier": {"gold": {"silver": 1}}, "activity_level": {}}, path, title="t")
    assert_png(path)


@pytest.mark.parametrize(
    "args",
    [["report", "--plot", "/nonexistent/x.png"],
     ["simulate", "--dry-run", "--customers", "2", "--output", "/nonexistent/x.jsonl"]],
)  # fmt: skip
def test_an_output_that_cannot_be_written_is_refused_before_any_work(args: list[str]) -> None:
    # Found at the end: after every API had been read (here: none answers) or the whole
    # population simulated.
    closed = f"http://127.0.0.1:{free_port()}"
    env = {f"TIERSTREAM_{s}_URL": closed for s in ("INGEST", "SCORER", "ACTIONS")}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert f"cannot write {args[-1]}: No such file or directory" in result.output
    assert "cannot read" not in result.output
