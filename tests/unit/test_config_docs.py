"""The configuration reference is generated from the settings classes and kept in sync."""

from __future__ import annotations

from pathlib import Path

from cli.config_docs import describe, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def test_configuration_reference_matches_the_settings_classes() -> None:
    assert DOC.read_text() == render(), "regenerate with: tierstream config > docs/CONFIGURATION.md"


def test_every_setting_has_a_description() -> None:
    from services.actions.settings import ActionsSettings
    from services.ingest.settings import IngestSettings
    from services.scorer.settings import ScorerSettings

    missing = [
        f"{cls.__name__}.{name}"
        for cls in (IngestSettings, ScorerSettings, ActionsSettings)
        for name in cls.model_fields
        if not describe(cls, name)
    ]
    assert missing == []
