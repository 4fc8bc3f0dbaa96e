"""`tierstream import` against a real ingest whose limits are below the CLI's batches.

Ingest runs in-process behind uvicorn on this test's own topics, with at most 3 events per
batch and a broker record limit of 4 KiB; the CLI runs as its own process, as a user runs it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from services.ingest.app import create_app
from shared.kafka import ensure_topics
from tests.integration.ingest.ingest_helpers import (
    API_KEY,
    ingest_settings,
    live_server,
    read_records,
    topics_of,
)


def import_csv(url: str, source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIERSTREAM_INGEST_URL": url, "TIERSTREAM_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "import", str(source), *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_an_import_fits_ingests_batch_limit_and_rejects_only_the_row_too_large(
    kafka_bootstrap: str, topic_namespace: str, tmp_path: Path
) -> None:
    settings = ingest_settings(
        kafka_bootstrap, topic_namespace, max_batch_events=3, kafka_max_message_bytes=4096
    )
    await ensure_topics(settings, topics_of(settings).events)
    notes = [f"attributes.note{n}" for n in range(6)]  # an attribute's text is bounded
    rows = [f"lim-{i},2025-03-{1 + i:02d}T10:00:00Z,web" + "," * len(notes) for i in range(10)]
    rows.insert(4, "lim-big,2025-03-20T10:00:00Z,web," + ",".join(["n" * 1000] * 6))  # line 6
    source = tmp_path / "logins.csv"
    columns = ",".join(["customer_id", "occurred_at", "channel", *notes])
    source.write_text(columns + "\n" + "\n".join(rows) + "\n")

    with live_server(create_app(settings)) as url:
        done = import_csv(url, source, "--type", "login", "--batch-size", "11")

    assert done.returncode == 3, done.stdout + done.stderr  # finished, one row rejected
    with source.with_name("logins.csv.rejects.csv").open(newline="") as handle:
        (header, rejected) = list(csv.reader(handle))
    assert header[:2] == ["line", "reason"]
    assert rejected[0] == "6" and rejected[2] == "lim-big"
    assert rejected[1].startswith("ingest: its Kafka record would take")
    assert "the broker accepts at most 4096" in rejected[1]
    records = await read_records(
        settings, topics_of(settings).logins, until=lambda found: len(found) >= 10
    )
    sent = sorted(json.loads(r.value)["customer_id"] for r in records)
    assert sent == [f"lim-{i}" for i in range(10)]
