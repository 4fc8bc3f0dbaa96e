"""Traces continue from the consumed record's headers; logs carry ids, never customer data at
info level, never a webhook URL's secret path."""

from __future__ import annotations

import json
from types import SimpleNamespace

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from services.actions.channels import Delivery, LogChannel, redact_url
from services.actions.decoding import decode
from shared.domain.playbooks import default_playbooks_path, load_playbooks
from shared.topics import Topics
from shared.tracing import make_tracer

TOPICS = Topics("ns")
BOOKS = load_playbooks(default_playbooks_path())
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _record(headers: list[tuple[str, bytes]]) -> SimpleNamespace:
    change = {
        "id": "chg-7", "customer_id": "cust-7", "dimension": "value_tier", "from": "silver",
        "to": "gold", "cause": "event", "rule": "r", "features": {}, "rules_version": "v",
        "occurred_at": "2026-05-01T08:00:00Z", "emitted_at": "2026-05-01T08:00:00Z",
    }  # fmt: skip
    return SimpleNamespace(topic=TOPICS.tier_changed, partition=2, offset=41, key=b"cust-7",
                           value=json.dumps(change).encode(), headers=headers)  # fmt: skip


def test_planning_continues_the_trace_carried_by_the_record() -> None:
    exporter = InMemorySpanExporter()
    tracer = make_tracer("actions", exporter=exporter)
    parent = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())]
    out = decode([_record(parent)], TOPICS, BOOKS, tracer)
    assert len(out.changes[0].requests) == 3
    [span] = exporter.get_finished_spans()
    assert span.name == "actions.plan" and span.parent is not None
    assert (f"{span.context.trace_id:032x}", f"{span.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)
    assert span.attributes is not None
    assert span.attributes["tierstream.tier_change_id"] == "chg-7"
    assert span.attributes["messaging.kafka.message.offset"] == 41
    tracer.shutdown()


def test_a_record_without_trace_context_starts_a_new_trace() -> None:
    exporter = InMemorySpanExporter()
    tracer = make_tracer("actions", exporter=exporter)
    decode([_record([("traceparent", b"garbage")])], TOPICS, BOOKS, tracer)
    [span] = exporter.get_finished_spans()
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID
    tracer.shutdown()


async def test_the_log_channel_names_the_change_at_info_and_the_customer_only_at_debug() -> None:
    delivery = Delivery(
        id=1, key="k-1", kind="alert", customer_id="cust-7", channel="log", recipient=None,
        subject="Customer cust-7 is at risk", body="Call cust-7", payload={}, playbook="at_risk",
        tier_change_id="chg-7",
    )  # fmt: skip
    with capture_logs() as logs:
        await LogChannel().send(delivery)
    info = [e for e in logs if e["log_level"] == "info"]
    assert [e["tier_change_id"] for e in info] == ["chg-7"]
    assert "cust-7" not in json.dumps(info)
    assert [e["customer_id"] for e in logs if e["log_level"] == "debug"] == ["cust-7"]


def test_webhook_urls_are_cut_to_scheme_and_host_in_errors() -> None:
    url = "https://hooks.slack.com/services/T000/B000/s3cr3tT0ken?x=1"
    assert redact_url(url) == "https://hooks.slack.com/..."
    assert redact_url("not a url") == "<url>"
