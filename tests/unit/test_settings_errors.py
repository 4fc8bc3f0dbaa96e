"""Bad configuration: one line per bad value, naming its variable, never printing a secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.actions.settings import ActionsSettings
from services.ingest.settings import IngestSettings
from services.scorer.settings import ScorerSettings
from shared.settings import ServiceSettings, settings_or_exit

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


@pytest.mark.parametrize("variable", ["ACTIONS_WEBHOOK_URL", "ACTIONS_CRM_WEBHOOK_URL"])
@pytest.mark.parametrize(
    "url", [f"hooks.slack.com/services/{SECRET}", f"ftp://x/{SECRET}", f"https:///{SECRET}"]
)
def test_a_webhook_url_must_be_absolute_http_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, url: str
) -> None:
    monkeypatch.setenv("ACTIONS_WEBHOOK_SECRET", "s")
    monkeypatch.setenv(variable, url)
    with pytest.raises(SystemExit):
        settings_or_exit(ActionsSettings)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"invalid configuration: {variable}: ") and "http" in line
    assert SECRET not in line


def test_a_webhook_url_is_kept_as_given() -> None:
    url = "https://hooks.slack.com/services/T0/B0/xyz?a=1"
    settings = ActionsSettings(webhook_url=url, crm_webhook_url=" http://crm:8080 ",
                               webhook_secret="s")  # fmt: skip
    assert (settings.webhook_url, settings.crm_webhook_url) == (url, "http://crm:8080")


def test_a_cross_field_error_never_shows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONS_WEBHOOK_URL", "http://hooks.example")
    monkeypatch.setenv("ACTIONS_SMTP_PASSWORD", SECRET)
    monkeypatch.setenv("TIERSTREAM_API_KEYS", f"prod:{SECRET}")
    with pytest.raises(ValidationError) as refused:
        ActionsSettings()
    assert "ACTIONS_WEBHOOK_SECRET is required" in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ("prod:", "API key entry 'prod' has an empty key"),
        (f"prod:{SECRET}é", "API key of entry 'prod' holds a space or a character"),
        (f"prod:{SECRET} x", "API key of entry 'prod' holds a space or a character"),
        # The name fills events' `source` (at most 256): each event was accepted, then poison.
        (f"{'s' * 257}:{SECRET}", "the source name is longer than 256 characters"),
    ],
)
def test_an_api_key_no_client_could_send_is_a_configuration_error_naming_its_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: str, reason: str
) -> None:
    """It was a traceback when the app was built (empty key), or a key that never matched
    (a client can send only printable ASCII in a header)."""
    monkeypatch.setenv("TIERSTREAM_API_KEYS", keys)
    with pytest.raises(SystemExit) as exited:
        settings_or_exit(ScorerSettings)
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("invalid configuration: SCORER_API_KEYS: ")  # or TIERSTREAM_
    assert reason in line and SECRET not in line


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        # inf passed gt=0: a sweep or a timeout that never comes; nan compares false to all.
        ("SCORER_SWEEP_INTERVAL_S", "inf", "finite number"),
        ("SCORER_RELAY_INTERVAL_S", "nan", "finite number"),
        ("ACTIONS_DELIVERY_TIMEOUT_S", "-inf", "finite number"),
        # timedelta overflowed on every request / every prune instead of refusing at start.
        ("INGEST_MAX_FUTURE_SECONDS", "1e300", "less than or equal to 31622400"),
        ("ACTIONS_INBOX_RETENTION_DAYS", "99999999999", "less than or equal to 36500"),
        # logging raised "Unknown level" with a traceback once the settings were accepted.
        ("TIERSTREAM_LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        # aiokafka's int() and the socket's port range, at connect time, as tracebacks.
        ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,foo:bar", "'foo:bar' is not host:port"),
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:99999", "with a port 1-65535"),
        # aiokafka took them: a session that expires at once, requests that time out at once.
        ("KAFKA_SESSION_TIMEOUT_MS", "-5", "greater than or equal to 1000"),
        ("KAFKA_REQUEST_TIMEOUT_MS", "0", "greater than or equal to 100"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    reason: str,
) -> None:
    monkeypatch.setenv(variable, value)
    services: dict[str, type[ServiceSettings]] = {
        "SCORER": ScorerSettings, "ACTIONS": ActionsSettings, "INGEST": IngestSettings
    }  # fmt: skip
    settings = services.get(variable.split("_")[0], IngestSettings)
    with pytest.raises(SystemExit):
        settings_or_exit(settings)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"invalid configuration: {variable}: ") and reason in line


def test_the_log_level_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERSTREAM_LOG_LEVEL", "debug")
    assert IngestSettings().log_level == "DEBUG"


@pytest.mark.parametrize("settings", [ScorerSettings, ActionsSettings])
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # Taken for Postgres URLs: the driver is the code's choice, not the URL's.
        ("mysql://u:secret@db:3306/app", "its scheme mysql:// is not Postgres's"),
        ("http://u:secret@db:5432/app", "its scheme http:// is not Postgres's"),
        # SQLAlchemy's parser failed at the first connection, with a traceback.
        ("nonsense", "not a database URL"),
    ],
)
def test_a_database_url_that_is_not_postgres_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: type[ServiceSettings],
    url: str,
    reason: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SystemExit):
        settings_or_exit(settings)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"invalid configuration: DATABASE_URL: {reason}"), line
    assert "secret" not in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db:5432/app",
        "postgres://u:p@db/app",
        "postgresql+asyncpg://u:p@db/app?sslmode=require",
        "postgresql+psycopg://u:p@db/app",
        "postgresql://u@/app?host=/tmp/socket-dir",
    ],
)
def test_every_postgres_url_form_the_services_connect_with_is_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert ScorerSettings().database_url == ActionsSettings().database_url == url
