"""Percent-encoded bytes that are not UTF-8, in a path or a query: a 422 naming which, from
every service, before any route runs (no database needed to tell)."""

from __future__ import annotations

import httpx
import pytest

from services.actions.app import create_app as actions_app
from services.actions.settings import ActionsSettings
from services.scorer.app import create_app as scorer_app
from services.scorer.settings import ScorerSettings

AUTH = {"Authorization": "Bearer k"}


@pytest.mark.parametrize(
    ("service", "url", "field"),
    [
        ("scorer", "/v1/customers/a%FFb", "path"),
        ("scorer", "/v1/customers/a%C3b/changes", "path"),
        ("scorer", "/v1/changes?cursor=%FF", "query"),
        ("actions", "/v1/tasks?customer_id=%E2%82", "query"),
        ("actions", "/v1/tasks/%FF", "path"),
    ],
)
async def test_bytes_that_are_not_utf8_are_a_422_not_a_mangled_lookup(
    service: str, url: str, field: str
) -> None:
    # Starlette put U+FFFD in their place: the scorer looked customer "a\ufffdb" up (404).
    env = {"TIERSTREAM_API_KEYS": "k"}
    app = (
        scorer_app(ScorerSettings.model_validate(env), pool=None)  # type: ignore[arg-type]
        if service == "scorer"
        else actions_app(ActionsSettings.model_validate(env))
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.get(url, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]
