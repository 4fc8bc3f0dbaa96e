"""What ingest logs of an accepted request, and at which level."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from structlog.testing import capture_logs

from services.ingest.intake import EventIntake
from services.ingest.metrics import IngestMetrics
from services.ingest.parsing import EventParser
from services.ingest.publisher import Event
from shared.clock import FixedClock
from shared.kafka import TraceHeaders
from shared.metrics import new_registry

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class AcceptingPublisher:
    """A broker that acknowledges everything."""

    available = True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, events: Sequence[Event], *, trace: TraceHeaders = ()) -> None:
        pass

    async def check(self) -> bool:
        return True


async def test_an_accepted_request_is_logged_at_debug_only() -> None:
    # One INFO line per request: a demo's or a shop's steady stream of them buried
    # everything else (`tierstream run`'s banner and key among it); the count of accepted
    # events is tierstream_ingest_events_total's.
    parser = EventParser.create(max_events=100, max_future_seconds=300)
    metrics = IngestMetrics.create(new_registry())
    intake = EventIntake(parser, AcceptingPublisher(), metrics, FixedClock(NOW), retry_after_s=1)
    event = {"type": "login", "event_id": "e-1", "customer_id": "c-1", "channel": "web",
             "occurred_at": NOW.isoformat()}  # fmt: skip
    with capture_logs() as logs:
        assert await intake.accept(json.dumps(event).encode(), source="shop", batch=False)
    assert {entry["event"]: entry["log_level"] for entry in logs} == {
        "events accepted": "debug",
        "accepted event ids": "debug",
    }
