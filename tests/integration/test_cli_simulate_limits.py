"""`tierstream simulate` against a real ingest: its own, lower, batch limit, and its reasons.

Ingest runs in-process behind uvicorn on this test's own topics; the CLI runs as its own
process, as a user runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from cli.simulation import simulate_population
from services.ingest.app import create_app
from shared.kafka import ensure_topics
from tests.integration.ingest.ingest_helpers import (
    API_KEY,
    ingest_settings,
    live_server,
    read_records,
    topics_of,
)

SEED, CUSTOMERS, DAYS = 3, 6, 90


def simulate(url: str, now: datetime) -> subprocess.CompletedProcess[str]:
    options = [f"--seed={SEED}", f"--customers={CUSTOMERS}", f"--days={DAYS}"]
    env = {
        **os.environ,
        "TIERSTREAM_INGEST_URL": url,
        "TIERSTREAM_API_KEY": API_KEY,
        "TIERSTREAM_NOW": now.isoformat(),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "simulate", *options, "--batch-size", "500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_simulate_sends_in_halves_what_ingest_refuses_as_too_many_events(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = ingest_settings(kafka_bootstrap, topic_namespace, max_batch_events=7)
    await ensure_topics(settings, topics_of(settings).events)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    events = simulate_population(seed=SEED, customers=CUSTOMERS, days=DAYS, end=now).events
    assert len(events) > 7  # more than one request's worth at ingest's limit

    with live_server(create_app(settings)) as url:
        done = simulate(url, now)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    accepted = re.search(r"accepted by ingest\s*│\s*(\d+)", output)
    assert accepted is not None and int(accepted.group(1)) == len(events), output
    logins = sum(e["type"] == "login" for e in events)
    records = await read_records(
        settings, topics_of(settings).logins, until=lambda found: len(found) >= logins
    )
    assert len(records) == logins


async def test_simulate_shows_the_reasons_ingest_gave_for_refusing_its_events(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = ingest_settings(kafka_bootstrap, topic_namespace)
    await ensure_topics(settings, topics_of(settings).events)
    later = datetime.now(UTC) + timedelta(days=30)  # the newest events lie in ingest's future

    with live_server(create_app(settings)) as url:
        done = simulate(url, later)

    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    refused = next(line for line in output.splitlines() if "ingest refused the events" in line)
    assert re.search(r"events\[\d+\]\.occurred_at: occurred_at lies .* in the future", refused)
    assert re.search(r"; and \d+ more\)$", refused), refused  # the first few, not all
