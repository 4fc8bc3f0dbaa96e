"""Traces continue from the consumed record's headers; logs carry ids, never customer data at
info level, never a webhook URL's secret path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.actions.batch import BatchResult
from services.actions.channels import Delivery, LogChannel, redact_url
from services.actions.consumer import ChangeConsumer
from services.actions.decoding import Decoded, decode
from services.actions.effects import ChannelConfig
from services.actions.metrics import actions_metrics, prime_metrics
from shared.clock import FixedClock
from shared.domain.playbooks import ActionFailure, default_playbooks_path, load_playbooks
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


def test_a_failed_action_template_is_logged_as_an_error_with_ids_and_counted() -> None:
    registry = CollectorRegistry()
    metrics = actions_metrics(registry)
    prime_metrics(metrics, playbooks=BOOKS, dlq_topics=[], loops=[])
    consumer = ChangeConsumer(
        cast(Any, None), cast(Any, None), cast(Any, None), group_id="g", topics=TOPICS,
        playbooks=BOOKS, channels=ChannelConfig(webhook=False, email=False, crm=False),
        clock=FixedClock(datetime(2026, 5, 1, tzinfo=UTC)), metrics=metrics, max_records=1,
        poll_timeout_ms=1,
    )  # fmt: skip
    error = "subject: UndefinedError: 'int object' has no attribute 'title'"
    result = BatchResult(fresh=1, failed=[
        ("chg-7", ActionFailure("at_risk", 0, "alert", error)),
        ("chg-8", ActionFailure("at_risk", 1, "task", "title: ...", fallback=True)),
    ])  # fmt: skip
    with capture_logs() as logs:
        consumer._count(result, Decoded())
        consumer._log(result, Decoded())
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [
        (e["event"], e["tier_change_id"], e["playbook"], e["action"], e["kind"]) for e in errors
    ] == [
        ("action template failed", "chg-7", "at_risk", 0, "alert"),
        ("action template failed", "chg-8", "at_risk", 1, "task"),
    ]
    assert errors[0]["error"] == error and errors[0]["outcome"] == "left out"
    assert errors[1]["outcome"] == "task opened with a fallback title"

    def failures(kind: str, playbook: str) -> float | None:
        labels = {"kind": kind, "playbook": playbook}
        return registry.get_sample_value("tierstream_actions_template_failures_total", labels)

    assert (failures("alert", "at_risk"), failures("task", "at_risk")) == (1, 1)
    assert failures("enrol", "gold_upgrade") == 0  # primed: increase() sees the first one
