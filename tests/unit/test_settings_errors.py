"""Bad configuration: one line per bad value, naming its variable, never printing a secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.actions.settings import ActionsSettings
from services.ingest.settings import IngestSettings
from services.scorer.settings import ScorerSettings
from shared.settings import settings_or_exit

SECRET = "MY-REAL-PRODUCTION-KEY-123"


def test_bad_values_are_named_by_their_variables_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIERSTREAM_API_KEYS", f"prod:{SECRET}")
    monkeypatch.setenv("TIERSTREAM_PARTITIONS", "abc")
    monkeypatch.setenv("INGEST_PORT", "99999")
    with pytest.raises(SystemExit) as exited:
        settings_or_exit(IngestSettings)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "TIERSTREAM_PARTITIONS",
        "INGEST_PORT",
    ]
    assert SECRET not in "".join(lines)


@pytest.mark.parametrize("settings", [IngestSettings, ScorerSettings, ActionsSettings])
def test_every_service_refuses_a_port_out_of_range(
    monkeypatch: pytest.MonkeyPatch, settings: type[IngestSettings]
) -> None:
    prefix = settings.model_config.get("env_prefix", "")
    monkeypatch.setenv(f"{prefix}PORT", "99999")
    with pytest.raises(ValidationError, match="less than or equal to 65535"):
        settings()


def test_a_cross_field_error_never_shows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONS_WEBHOOK_URL", "http://hooks.example")
    monkeypatch.setenv("ACTIONS_SMTP_PASSWORD", SECRET)
    monkeypatch.setenv("TIERSTREAM_API_KEYS", f"prod:{SECRET}")
    with pytest.raises(ValidationError) as refused:
        ActionsSettings()
    assert "ACTIONS_WEBHOOK_SECRET is required" in str(refused.value)
    assert SECRET not in str(refused.value)
