"""Self-description (OpenAPI, JSON Schemas) and observability (metrics, logs) of ingest."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_helpers import API_KEY, AUTH, login, purchase

EVENT_STATUSES = {"202", "400", "401", "413", "415", "422", "503"}


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
async def test_openapi_documents_every_status_code_with_an_example(
    client: httpx.AsyncClient, path: str
) -> None:
    doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"][path]["post"]
    assert set(operation["responses"]) == EVENT_STATUSES
    for status, response in operation["responses"].items():
        media = "application/json" if status == "202" else "application/problem+json"
        assert "example" in response["content"][media], (status, response)
    assert operation["responses"]["503"]["headers"]["Retry-After"]
    assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].startswith("#/components/schemas/") and body["examples"]
    assert operation["security"] == [{"apiKey": []}]


async def test_openapi_schemas_carry_the_configured_limits_and_both_amount_forms(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    events = schemas["EventBatch"]["properties"]["events"]
    assert events["maxItems"] == settings.max_batch_events and events["minItems"] == 1
    amount_types = {alt["type"] for alt in schemas["PurchaseMade"]["properties"]["amount"]["anyOf"]}
    assert amount_types == {"number", "string"}
    assert set(schemas["CustomerEvent"]["discriminator"]["mapping"]) == {
        "purchase",
        "login",
        "support",
    }


async def test_interactive_docs_are_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200 and "swagger" in response.text.lower()


async def test_schemas_endpoint_serves_each_event_types_json_schema(
    client: httpx.AsyncClient,
) -> None:
    everything = (await client.get("/v1/schemas")).json()
    assert set(everything) == {"purchase", "login", "support"}
    for name, schema in everything.items():
        one = await client.get(f"/v1/schemas/{name}")
        assert one.status_code == 200 and one.json() == schema
        assert {"event_id", "customer_id", "occurred_at", "type"} <= set(schema["required"])
    assert "additionalProperties" in everything["purchase"]
    assert everything["purchase"]["additionalProperties"] is False


def _patterns(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


async def test_schema_patterns_are_ecmascript_without_inline_flags(
    client: httpx.AsyncClient,
) -> None:
    # JSON Schema patterns are ECMAScript regular expressions: `(?s:...)` did not compile in
    # a JavaScript validator.
    patterns = _patterns((await client.get("/v1/schemas")).json())
    assert patterns and [p for p in patterns if re.search(r"\(\?[a-zA-Z]", p)] == []


async def test_an_unknown_schema_type_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/schemas/refund")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_metrics_count_outcomes_and_durations_without_ids_in_labels(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    secret_customer = "cust-never-a-label-7781"
    ok = [purchase(customer_id=secret_customer), purchase(customer_id=secret_customer)]
    bad = [login(customer_id=secret_customer, channel=""), purchase(currency="x")]
    assert (await client.post("/v1/events/batch", json={"events": ok}, headers=AUTH)).is_success
    rejected = await client.post("/v1/events/batch", json={"events": bad}, headers=AUTH)
    assert rejected.status_code == 422

    events = "tierstream_ingest_events_total"
    assert sample(registry, events, type="purchase", source="shop", outcome="accepted") == 2
    assert sample(registry, events, type="purchase", source="shop", outcome="rejected") == 1
    assert sample(registry, events, type="login", source="shop", outcome="rejected") == 1
    request = "tierstream_ingest_request_duration_seconds_count"
    labels = {"route": "/v1/events/batch", "method": "POST"}
    assert sample(registry, request, **labels, status="202") == 1
    assert sample(registry, request, **labels, status="422") == 1
    assert sample(registry, "tierstream_ingest_publish_duration_seconds_count", outcome="ok") == 1
    assert sample(registry, "tierstream_ingest_batch_size_events_count") == 2
    assert sample(registry, "tierstream_ingest_broker_available") == 1

    exposition = (await client.get("/metrics")).text
    assert "tierstream_ingest_events_total" in exposition
    assert secret_customer not in exposition and ok[0]["event_id"] not in exposition


async def test_every_outcome_is_exported_at_zero_before_the_first_event(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    # A series born at 1 shows no increase(): the first rejected or failed events of a
    # source were invisible to the alerts and panels built on it.
    events = "tierstream_ingest_events_total"
    for kind in ("purchase", "login", "support"):
        for outcome in ("accepted", "rejected", "failed"):
            labels = {"type": kind, "source": "shop", "outcome": outcome}
            assert registry.get_sample_value(events, labels) == 0.0, labels
    unknown = {"type": "unknown", "source": "shop", "outcome": "rejected"}
    assert registry.get_sample_value(events, unknown) == 0.0
    for outcome in ("ok", "failed"):
        count = "tierstream_ingest_publish_duration_seconds_count"
        assert registry.get_sample_value(count, {"outcome": outcome}) == 0.0


async def test_readyz_reports_the_broker(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"kafka": True}}


async def test_logs_never_carry_customer_ids_or_api_keys(
    client: httpx.AsyncClient, capfd: pytest.CaptureFixture[str]
) -> None:
    customer = "cust-not-in-logs-5531"
    events: list[dict[str, Any]] = [purchase(customer_id=customer), login(customer_id=customer)]
    assert (await client.post("/v1/events/batch", json={"events": events}, headers=AUTH)).is_success
    bad = await client.post("/v1/events", json=login(customer_id=customer, nps=3), headers=AUTH)
    assert bad.status_code == 422
    out, err = capfd.readouterr()
    logs = out + err
    assert "events accepted" in logs  # the logs were captured at all
    assert customer not in logs and API_KEY not in logs
    assert "events rejected" in logs


async def test_a_refused_body_is_logged_with_where_and_why_but_no_values(
    client: httpx.AsyncClient,
) -> None:
    # Counted only: the operator could not tell a sender which field it broke.
    bad = [purchase(customer_id="cust-secret-1", currency="x"), login(channel="")]
    with capture_logs() as logs:
        refused = await client.post("/v1/events/batch", json={"events": bad}, headers=AUTH)
    assert refused.status_code == 422
    [rejected] = [entry for entry in logs if entry["event"] == "events rejected"]
    assert (rejected["source"], rejected["status"], rejected["count"]) == ("shop", 422, 2)
    assert [field for field, _ in rejected["errors"]] == ["events[0].currency", "events[1].channel"]
    assert "cust-secret-1" not in repr(logs)
