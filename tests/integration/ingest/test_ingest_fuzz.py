"""Property-based fuzzing of the ingest API from its own OpenAPI document (schemathesis).

Live uvicorn server, real broker. Pass criterion: no 5xx; every status code, content type,
header and body conforms to what the OpenAPI document promises; input that violates the
documented schema is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import formats
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.integration.ingest.ingest_helpers import AUTH, live_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # schema-violating input must be refused with a 4xx
]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
CASES = [
    ("/v1/events", "POST", POSITIVE),
    ("/v1/events", "POST", NEGATIVE),
    ("/v1/events/batch", "POST", POSITIVE),
    ("/v1/events/batch", "POST", NEGATIVE),
    ("/v1/schemas", "GET", POSITIVE),  # no parameters: nothing to make invalid
    ("/v1/schemas/{event_type}", "GET", POSITIVE),  # any string is a valid path value
]


@pytest.fixture(autouse=True)
def times_ingest_accepts() -> Iterator[None]:
    """`date-time` values inside the window ingest accepts (INGEST_MAX_PAST_DAYS back, not
    ahead of now), which JSON Schema cannot state: generated times spread over years 1-9999,
    and hypothesis favours 2000-01-01, older than the window, so a positive batch was
    accepted only by luck (once in a while, none of 60 was)."""
    now = datetime.now(UTC)
    times = st.datetimes(min_value=(now - timedelta(days=365)).replace(tzinfo=None),
                         max_value=now.replace(tzinfo=None), timezones=st.just(UTC))  # fmt: skip
    formats.STRING_FORMATS["date-time"] = times.map(datetime.isoformat)
    formats._invalidate_caches()
    try:
        yield
    finally:
        del formats.STRING_FORMATS["date-time"]
        formats._invalidate_caches()


@pytest.fixture
def base_url(settings: IngestSettings) -> Iterator[str]:
    """The ingest app (its own publisher, started by the lifespan) behind a real uvicorn."""
    with live_server(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_the_api_honours_its_openapi_document(
    base_url: str, path: str, method: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operation = schema[path][method]
    statuses: list[int] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS)
        statuses.append(response.status_code)

    exercise()
    assert statuses, "no request was made"
    if path.startswith("/v1/events") and mode is POSITIVE:
        assert 202 in statuses, f"no generated event was accepted: {sorted(set(statuses))}"
