"""IngestSettings: its own prefix, the shared key variables, the documented defaults."""

from __future__ import annotations

import pytest

from services.ingest.settings import IngestSettings

SHARED = (
    "TIERSTREAM_API_KEYS",
    "TIERSTREAM_ALLOW_ANONYMOUS",
    "INGEST_API_KEYS",
    "INGEST_ALLOW_ANONYMOUS",
    "INGEST_PORT",
    "INGEST_MAX_BATCH_EVENTS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SHARED:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_contract() -> None:
    settings = IngestSettings()
    assert settings.port == 8080
    assert settings.max_batch_events == 1000
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.max_future_seconds == 300
    assert settings.api_key_map() == {} and settings.allow_anonymous is False


def test_the_shared_key_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERSTREAM_API_KEYS", "shop:k1, k2")
    assert IngestSettings().api_key_map() == {"k1": "shop", "k2": "default"}


def test_ingests_own_key_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERSTREAM_API_KEYS", "shared:k1")
    monkeypatch.setenv("INGEST_API_KEYS", "own:k9")
    assert IngestSettings().api_key_map() == {"k9": "own"}


@pytest.mark.parametrize("name", ["INGEST_ALLOW_ANONYMOUS", "TIERSTREAM_ALLOW_ANONYMOUS"])
def test_anonymous_access_is_read_from_either_variable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "true")
    assert IngestSettings().allow_anonymous is True


def test_prefixed_limits_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_PORT", "9099")
    monkeypatch.setenv("INGEST_MAX_BATCH_EVENTS", "10")
    settings = IngestSettings()
    assert (settings.port, settings.max_batch_events) == (9099, 10)


def test_keys_are_secret_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_API_KEYS", "shop:very-secret-key")
    assert "very-secret-key" not in repr(IngestSettings())


def test_without_keys_it_refuses_to_start_unless_anonymous() -> None:
    with pytest.raises(SystemExit):
        IngestSettings().require_keys()
    IngestSettings(allow_anonymous=True).require_keys()


def test_an_empty_own_key_variable_is_named_as_what_hides_the_shared_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIERSTREAM_API_KEYS", "shop:k1")
    monkeypatch.setenv("INGEST_API_KEYS", "")
    with pytest.raises(SystemExit, match="INGEST_API_KEYS is set but holds no key"):
        IngestSettings().require_keys()
