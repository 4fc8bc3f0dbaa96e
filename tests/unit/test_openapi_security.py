"""The read and task APIs document their API key, as ingest does: generated clients and
API explorers (Swagger UI's Authorize) send it only when the document says so."""

from __future__ import annotations

from typing import Any

import pytest

from services.actions.app import create_app as actions_app
from services.actions.settings import ActionsSettings
from services.scorer.app import create_app as scorer_app
from services.scorer.settings import ScorerSettings

PROBES = {"/healthz", "/readyz", "/metrics"}


def _document(service: str) -> dict[str, Any]:
    env = {"TIERSTREAM_API_KEYS": "k"}
    if service == "scorer":
        return scorer_app(ScorerSettings.model_validate(env), pool=None).openapi()  # type: ignore[arg-type]
    return actions_app(ActionsSettings.model_validate(env)).openapi()


@pytest.mark.parametrize("service", ["scorer", "actions"])
def test_every_api_route_declares_the_bearer_key(service: str) -> None:
    document = _document(service)
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    operations = [
        (path, operation)
        for path, item in document["paths"].items()
        if path not in PROBES
        for operation in item.values()
    ]
    assert operations and all(op.get("security") == [{"apiKey": []}] for _, op in operations)
