"""The CLI's own variables, defined once: `Endpoints.from_env` takes their names and defaults
from here, and `tierstream config` documents them from here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Service = Literal["ingest", "scorer", "actions"]


class CliSettings(BaseSettings):
    """Where `import`, `simulate` and `report` find the services, and the key they send.

    Read by `cli.api_client.Endpoints.from_env`, which checks each value itself (its errors
    name the variable and never show the key); this class is the variables' definition."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    ingest_url: str = Field(
        "http://127.0.0.1:8080",
        validation_alias="TIERSTREAM_INGEST_URL",
        description="Base URL (http(s)://host:port) of the ingest service that `import` and "
        "`simulate` send events to.",
    )
    scorer_url: str = Field(
        "http://127.0.0.1:8081",
        validation_alias="TIERSTREAM_SCORER_URL",
        description="Base URL of the scorer, whose read API `report` reads.",
    )
    actions_url: str = Field(
        "http://127.0.0.1:8082",
        validation_alias="TIERSTREAM_ACTIONS_URL",
        description="Base URL of the actions service, whose task API `report` reads.",
    )
    api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias="TIERSTREAM_API_KEY",
        description="The key the CLI sends to every service (`Authorization: Bearer`): one of "
        "their `TIERSTREAM_API_KEYS` (or `<SERVICE>_API_KEYS`); `tierstream run` prints the one "
        "it generates.",
    )


def variable(field: str) -> str:
    """The environment variable of one of CliSettings' fields."""
    return str(CliSettings.model_fields[field].validation_alias)


def url_variable(service: Service) -> str:
    """The variable holding a service's base URL, e.g. TIERSTREAM_SCORER_URL."""
    return variable(f"{service}_url")


def default_url(service: Service) -> str:
    """A service's base URL when its variable is unset (its local port)."""
    return str(CliSettings.model_fields[f"{service}_url"].default)
