"""The ingest use case: parse a body, stamp the source, publish, count the outcome."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.ingest.metrics import IngestMetrics
from services.ingest.parsing import EventParser, decode_json, loose_types
from services.ingest.publisher import (
    BrokerUnavailableError,
    Event,
    EventTooLargeError,
    Publisher,
)
from shared.clock import Clock
from shared.contracts import NUL_ESCAPE
from shared.gcpause import gc_paused
from shared.http import ProblemError
from shared.kafka import TraceHeaders
from shared.logging import get_logger

log = get_logger(__name__)


def with_source(events: Sequence[Event], source: str) -> list[Event]:
    """Events whose missing `source` is filled with the API key's source name."""
    return [e if e.source else e.model_copy(update={"source": source}) for e in events]


def unacknowledged_detail(retry_after_s: int) -> str:
    """A 503's detail: the sender must not take the events for refused (some may be on the
    topic) nor correct them under the same ids (a repeated id is dropped downstream)."""
    return (
        "The broker did not acknowledge the events; some may have been written. Send them all"
        f" again, unchanged and with the same event_ids, after {retry_after_s} s."
    )


@dataclass(frozen=True)
class EventIntake:
    """Accepts events only once the broker acknowledged every one of them."""

    parser: EventParser
    publisher: Publisher
    metrics: IngestMetrics
    clock: Clock
    retry_after_s: int

    async def accept(
        self, raw: bytes, *, source: str, batch: bool, trace: TraceHeaders = ()
    ) -> list[str]:
        """Validate and publish one body; returns the accepted event ids or raises ProblemError.

        `trace`: W3C trace headers put on every record, so the trace reaches the scorer.
        """
        events = with_source(self._parse(raw, source=source, batch=batch), source)
        self.metrics.batch_events.observe(len(events))
        await self._publish(events, source=source, batch=batch, trace=trace)
        ids = [e.event_id for e in events]
        log.debug("events accepted", count=len(ids), source=source)
        log.debug("accepted event ids", event_ids=ids)
        return ids

    def _parse(self, raw: bytes, *, source: str, batch: bool) -> list[Event]:
        with gc_paused():
            data = decode_json(raw)
            self.parser.fill_source(data, source, batch=batch)
            try:
                events = self.parser.validate(data, now=self.clock.now(), batch=batch)
                if NUL_ESCAPE in raw:
                    self.parser.refuse_nul(data, batch=batch)
                return events
            except ProblemError as exc:
                types = loose_types(data, batch=batch)
                self.metrics.batch_events.observe(len(types))
                self.metrics.count_events(types, source=source, outcome="rejected")
                # Where and why, never the values (they may be personal data): what an
                # operator needs to tell a sender which field it broke.
                errors = [(e.get("field"), e.get("type")) for e in (exc.errors or [])[:10]]
                log.info("events rejected", status=exc.status, count=len(types), source=source,
                         errors=errors)  # fmt: skip
                raise

    async def _publish(
        self, events: list[Event], *, source: str, batch: bool, trace: TraceHeaders
    ) -> None:
        types = [e.type for e in events]
        started = time.perf_counter()
        try:
            await self.publisher.publish(events, trace=trace)
        except EventTooLargeError as exc:
            self.metrics.count_events(types, source=source, outcome="rejected")
            raise too_large_problem(exc, events, batch=batch) from None
        except BrokerUnavailableError:
            self.metrics.publish_seconds.labels("failed").observe(time.perf_counter() - started)
            self.metrics.count_events(types, source=source, outcome="failed")
            raise ProblemError(
                503,
                "Broker unavailable",
                unacknowledged_detail(self.retry_after_s),
                headers={"Retry-After": str(self.retry_after_s)},
            ) from None
        self.metrics.publish_seconds.labels("ok").observe(time.perf_counter() - started)
        self.metrics.count_events(types, source=source, outcome="accepted")


def too_large_problem(
    exc: EventTooLargeError, events: Sequence[Event], *, batch: bool
) -> ProblemError:
    """413 naming the event whose Kafka record is over the broker's limit (when known)."""
    if exc.index is None:
        detail = (
            "The broker refused an event of this request as too large (its limit is below"
            f" {exc.limit} bytes); none is reported accepted, though some may have been written."
        )
        return ProblemError(413, "Event too large", detail)
    event = events[exc.index]
    where = f"events[{exc.index}]" if batch else "event"
    reason = (
        f"its Kafka record would take {exc.size} bytes; the broker accepts at most {exc.limit}"
        " (shorten its attributes or line items)"
    )
    return ProblemError(
        413, "Event too large", f"Event {event.event_id!r} is too large; nothing was published.",
        errors=[{"field": where, "reason": reason, "type": "record_too_large",
                 "index": exc.index if batch else None}],
    )  # fmt: skip
