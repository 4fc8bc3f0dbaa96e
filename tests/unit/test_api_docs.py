"""The HTTP API reference is generated from the services' OpenAPI documents and kept in sync."""

from __future__ import annotations

from pathlib import Path

from cli.api_docs import documents, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"


def test_api_reference_matches_the_apps() -> None:
    assert DOC.read_text() == render(), "regenerate with: tierstream api-reference > docs/API.md"


def test_every_route_of_every_service_is_listed() -> None:
    text = render()
    for document in documents().values():
        for path, item in document["paths"].items():
            for method in item:
                assert f"| {method.upper()} | `{path}` |" in text, (method, path)
