"""Ingest settings: env prefix `INGEST_`, shared broker and key variables read as aliases."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """Configuration of the ingest service (HTTP limits, publish bounds, API keys)."""

    model_config = SettingsConfigDict(
        env_prefix="INGEST_", frozen=True, populate_by_name=True, extra="ignore"
    )

    @model_validator(mode="after")
    def _kafka_security(self) -> IngestSettings:
        self._refuse_incomplete_kafka_security()
        return self

    port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP API.")
    api_keys: Annotated[SecretStr, NoDecode] = Field(
        SecretStr(""),
        validation_alias=AliasChoices("INGEST_API_KEYS", "TIERSTREAM_API_KEYS"),
        description="Comma-separated `key` or `source:key` entries.",
    )
    allow_anonymous: bool = Field(
        False,
        validation_alias=AliasChoices("INGEST_ALLOW_ANONYMOUS", "TIERSTREAM_ALLOW_ANONYMOUS"),
        description="Serve without API keys (development only).",
    )
    max_batch_events: int = Field(1000, ge=1, description="Most events in one batch request.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body, bytes.")
    max_future_seconds: float = Field(
        300.0,
        ge=0,
        le=366 * 86400,  # a bound on clock skew, not a way to accept any date: at most a year
        description="How far in the future `occurred_at` may lie (clock skew; at most 366 days).",
    )
    max_past_days: int = Field(
        7305,
        ge=0,
        le=36_500,
        description="How far in the past `occurred_at` may lie, in days (default 20 years); 0:"
        " no bound; at most 36,500. A zero date from a sender's bug (0001-01-01, 1970-01-01)"
        " would make the customer churned at once. Raise it to import older history.",
    )
    publish_timeout_s: float = Field(
        5.0, gt=0, description="Upper bound for one request's publish, broker ack included."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 answers.")
    ready_timeout_s: float = Field(2.0, gt=0, description="Upper bound for the /readyz check.")
