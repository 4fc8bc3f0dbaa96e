"""The configuration reference is generated from the settings classes and kept in sync."""

from __future__ import annotations

from pathlib import Path

from cli.config_docs import describe, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def test_configuration_reference_matches_the_settings_classes() -> None:
    assert DOC.read_text() == render(), "regenerate with: tierstream config > docs/CONFIGURATION.md"


def test_every_setting_has_a_description() -> None:
    from cli.settings import CliSettings
    from services.actions.settings import ActionsSettings
    from services.ingest.settings import IngestSettings
    from services.scorer.settings import ScorerSettings

    missing = [
        f"{cls.__name__}.{name}"
        for cls in (IngestSettings, ScorerSettings, ActionsSettings, CliSettings)
        for name in cls.model_fields
        if not describe(cls, name)
    ]
    assert missing == []


def test_each_setting_says_the_values_its_validation_allows() -> None:
    rows = {line.split(" | ")[0]: line.split(" | ")[2] for line in render().splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert rows["| `KAFKA_FETCH_MAX_WAIT_MS`"] == "1 to 5,000"
    assert rows["| `SCORER_BATCH_MAX_RECORDS`"] == ">= 1"
    assert rows["| `SCORER_API_DB_TIMEOUT_S`"] == "> 0, <= 60"
    assert rows["| `TIERSTREAM_TRACING`"] == "`off` \\| `console` \\| `otlp`"
    assert rows["| `ACTIONS_SMTP_STARTTLS`"] == "`true` \\| `false`"
    assert rows["| `DATABASE_URL`"] == ""


def test_the_cli_variables_are_listed_with_the_defaults_the_cli_uses() -> None:
    # They were missing, though the reference says it lists every setting.
    from cli.api_client import Endpoints

    rows = {line.split(" | ")[0]: line.split(" | ")[1] for line in render().splitlines()
            if line.startswith("| `")}  # fmt: skip
    defaults = Endpoints.from_env({})
    assert rows["| `TIERSTREAM_INGEST_URL`"] == f"`{defaults.ingest}`"
    assert rows["| `TIERSTREAM_SCORER_URL`"] == f"`{defaults.scorer}`"
    assert rows["| `TIERSTREAM_ACTIONS_URL`"] == f"`{defaults.actions}`"
    assert rows["| `TIERSTREAM_API_KEY`"] == "—"
