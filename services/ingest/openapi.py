"""The ingest API's OpenAPI document: request schemas, every status code, with examples.

The event routes read their body themselves (bounded, strict), so FastAPI cannot derive the
request schema; it is added here from the same pydantic models that validate it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from services.ingest.intake import unacknowledged_detail
from services.ingest.parsing import EventBatch, FieldError, IncomingEvent
from shared.contracts import CustomerLoggedIn, PurchaseMade, SupportTicketUpdated
from shared.http import PROBLEM_JSON

REF = "#/components/schemas/{model}"


class Accepted(BaseModel):
    """202 answer: the broker acknowledged every listed event."""

    accepted: int = Field(description="How many events the broker acknowledged.")
    event_ids: list[str] = Field(description="The accepted events' ids, in request order.")


class Problem(BaseModel):
    """RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="Every validation error (422).")


PURCHASE_EXAMPLE: dict[str, Any] = {
    "type": "purchase",
    "event_id": "ord-1001-paid",
    "customer_id": "cust-42",
    "occurred_at": "2025-03-01T12:00:00Z",
    "order_id": "ord-1001",
    "amount": "149.90",
    "currency": "EUR",
    "category": "hardware",
}
LOGIN_EXAMPLE: dict[str, Any] = {
    "type": "login",
    "event_id": "login-77",
    "customer_id": "cust-42",
    "occurred_at": "2025-03-02T08:30:00+01:00",
    "channel": "web",
    "country": "DE",
}
SUPPORT_EXAMPLE: dict[str, Any] = {
    "type": "support",
    "event_id": "tkt-9-resolved",
    "customer_id": "cust-42",
    "occurred_at": "2025-03-03T17:45:00Z",
    "ticket_id": "tkt-9",
    "action": "resolved",
    "satisfaction": 5,
}


def _problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://tierstream.dev/problems/{status}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }


def _problem_response(description: str, example: dict[str, Any], **more: Any) -> dict[str, Any]:
    content = {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}, "example": example}}
    return {"description": description, "content": content, **more}


INVALID_EXAMPLE = _problem(
    422,
    "Invalid events",
    "2 validation error(s); nothing was published.",
    errors=[
        {
            "field": "events[1].amount",
            "reason": "Input should be greater than or equal to 0",
            "type": "greater_than_equal",
            "index": 1,
        },
        {
            "field": "events[3].occurred_at",
            "reason": "Input should have timezone info",
            "type": "timezone_aware",
            "index": 3,
        },
    ],
)

EVENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Every event was acknowledged by the broker.",
        "content": {
            "application/json": {"example": {"accepted": 1, "event_ids": ["ord-1001-paid"]}}
        },
    },
    400: _problem_response(
        "Malformed JSON, a key repeated within one object included.",
        _problem(400, "Malformed JSON", "Invalid JSON: expected value at line 1 column 1"),
    ),
    401: _problem_response(
        "Missing or wrong API key.",
        _problem(401, "Unauthorized", "Send a valid API key as 'Authorization: Bearer <key>'."),
        headers={
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer realm."}
        },
    ),
    413: _problem_response(
        "The body exceeds the configured size limit, or an event's Kafka record would exceed"
        " the broker's (KAFKA_MAX_MESSAGE_BYTES; the error names the event): nothing was"
        " published. Or the broker itself refused a record as too large (its limit is below"
        " KAFKA_MAX_MESSAGE_BYTES): none is reported accepted, though events of other"
        " partitions may have been written. Resending the same body cannot succeed.",
        _problem(413, "Request body too large", "The body must not exceed 1048576 bytes."),
    ),
    415: _problem_response(
        "The body is not declared as JSON, declares a charset other than UTF-8, or is"
        " compressed (Content-Encoding other than identity).",
        _problem(
            415, "Unsupported media type", "Send the body as 'Content-Type: application/json'."
        ),
    ),
    422: _problem_response(
        "Invalid events (up to 100 errors listed, all counted); nothing was published.",
        INVALID_EXAMPLE,
    ),
    503: _problem_response(
        "The broker did not acknowledge every event in time: none is reported accepted, though "
        "some may have been written. Resend them all after Retry-After (same event_ids; "
        "duplicates are dropped downstream).",
        _problem(503, "Broker unavailable", unacknowledged_detail(5)),
        headers={
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "Seconds to wait before retrying.",
            }
        },
    ),
}

SCHEMA_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _problem_response(
        "Unknown event type.",
        _problem(404, "Unknown event type", "Known types: purchase, login, support."),
    ),
    422: _problem_response("Invalid request.", _problem(422, "Invalid request", "Invalid path.")),
}


def request_body(schema: str, examples: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body the route reads itself."""
    content = {
        "schema": {"$ref": REF.format(model=schema)},
        "examples": {name: {"value": value} for name, value in examples.items()},
    }
    # The route's `security` comes from its key dependency (shared.http.require_key).
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def component_schemas(batch: type[EventBatch]) -> dict[str, Any]:
    """JSON Schemas (validation mode) of every body and answer the event routes use."""
    models: list[tuple[type[BaseModel], Any]] = [
        (PurchaseMade, "validation"),
        (CustomerLoggedIn, "validation"),
        (SupportTicketUpdated, "validation"),
        (batch, "validation"),
        (Problem, "serialization"),
        (Accepted, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    union = TypeAdapter(IncomingEvent).json_schema(ref_template=REF)
    union.pop("$defs", None)
    schemas["CustomerEvent"] = union
    return schemas


def install_openapi(app: FastAPI, batch: type[EventBatch]) -> None:
    """Replace `app.openapi` with one that adds the event schemas and the API key scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = doc.setdefault("components", {})
            components.setdefault("schemas", {}).update(component_schemas(batch))
            components["securitySchemes"] = {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An ingest API key: 'Authorization: Bearer <key>'.",
                }
            }
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
