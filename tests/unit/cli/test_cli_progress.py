"""Long phases show their progress on a terminal: simulate's generating and writing, report's
reading; off a terminal those passing bars are not drawn at all (scripts read the lines)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from rich.console import Console

from cli.report import run_report
from cli.simulate import SimulateOptions, run_simulate
from tests.support.json_server import json_server

CLASSES = {"value_tier": "gold", "activity_level": "active", "lifecycle_stage": "new"}
PAGES: dict[str, list[dict[str, Any]]] = {
    "/v1/customers": [{"customer_id": f"c{i}", **CLASSES} for i in range(3)],
    "/v1/changes": [],
    "/v1/tasks": [],
    "/v1/sequences/enrollments": [],
}


def page(path: str, cursor: int) -> dict[str, Any]:
    """One item per page, so a listing takes several requests, as a long one does."""
    items = PAGES[path]
    more = cursor + 1 < len(items)
    return {"items": items[cursor : cursor + 1], "next_cursor": str(cursor + 1) if more else None}


@pytest.fixture
def scorer_and_actions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local HTTP server answering the reads `report` makes, named by the variables."""

    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        url = urlparse(path)
        if url.path == "/v1/stats/tiers":
            return 200, {}, {"customers": 3, "value_tier": {"gold": 3}}
        return 200, {}, page(url.path, int(parse_qs(url.query).get("cursor", ["0"])[0]))

    with json_server(answer) as url:
        monkeypatch.setenv("TIERSTREAM_SCORER_URL", url)
        monkeypatch.setenv("TIERSTREAM_ACTIONS_URL", url)
        monkeypatch.setenv("TIERSTREAM_NOW", "2026-06-01T12:00:00Z")
        yield


def console(*, terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, color_system=None, width=150)


def shown(out: Console) -> str:
    """What was written, without the cursor movements a live display makes."""
    file = out.file
    assert isinstance(file, io.StringIO)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", file.getvalue())


def test_report_counts_the_customers_it_reads_against_the_stats_total(
    scorer_and_actions: None,
) -> None:
    out = console(terminal=True)
    assert run_report(None, None, True, out) == 0
    assert re.search(r"customers\b.*\b3/3\b", shown(out)), shown(out)

    quiet = console(terminal=False)
    assert run_report(None, None, True, quiet) == 0
    assert shown(quiet) == ""


def test_simulate_counts_customers_made_and_events_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERSTREAM_NOW", "2026-06-01T12:00:00Z")
    output = tmp_path / "events.jsonl"
    options = SimulateOptions(customers=30, days=60, seed=1, dry_run=True, output=output)
    out = console(terminal=True)
    assert run_simulate(options, out) == 0
    events = len(output.read_text().splitlines())
    assert re.search(r"generating\b.*\b30/30 customers", shown(out)), shown(out)
    assert re.search(rf"writing\b.*\b{events}/{events} events", shown(out)), shown(out)

    quiet = console(terminal=False)
    assert run_simulate(options, quiet) == 0
    assert "generating" not in shown(quiet) and "writing" not in shown(quiet)
    assert f"wrote {events} events" in shown(quiet)
