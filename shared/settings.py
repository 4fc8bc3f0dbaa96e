"""Settings shared by every service: one frozen pydantic-settings class per concern.

Each service subclasses `ServiceSettings` with its own env prefix (`INGEST_`, `SCORER_`,
`ACTIONS_`); the shared variables (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`,
`TIERSTREAM_*`) use explicit aliases so they are read the same way by all three.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contracts import SHORT_TEXT_MAX_CHARS
from shared.database_url import url_problem

S = TypeVar("S", bound=BaseSettings)
TIERSTREAM_KEYS = "TIERSTREAM_API_KEYS"  # every service's; each also reads its own first
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/tierstream"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _empty_is_none(value: object) -> object:
    # docker-compose and Kubernetes pass "" for a variable that is declared but not set.
    return None if isinstance(value, str) and not value.strip() else value


def _bootstrap_servers(value: str) -> str:
    """Each entry `host:port` (port 1-65535) or `host` (port 9092): aiokafka failed on others
    at connect time with a traceback (`foo:bar`: int(); `h:99999`: the socket's range)."""
    for entry in (e.strip() for e in value.split(",")):
        host, colon, port = entry.rpartition(":")
        if not colon:
            host, port = entry, "9092"
        if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"{entry!r} is not host:port with a port 1-65535")
    return value


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse `key` or `source:key` comma-separated entries into {key: source}."""
    keys: dict[str, str] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        source, sep, key = entry.partition(":")
        if not sep:
            source, key = "default", entry
        key = key.strip()
        if not key:
            raise ValueError(f"API key entry {source!r} has an empty key")
        if not (key.isascii() and key.isprintable()) or " " in key:
            # A client can send only printable ASCII in a header: such a key never matched.
            raise ValueError(
                f"API key of entry {source.strip()!r} holds a space or a character other than "
                "printable ASCII"
            )
        name = source.strip() or "default"
        if len(name) > SHORT_TEXT_MAX_CHARS:
            # It fills events' `source`, which the contract bounds: each would be poison.
            raise ValueError(
                f"API key entry {name[:40]!r}...: the source name is longer than"
                f" {SHORT_TEXT_MAX_CHARS} characters"
            )
        keys[key] = name
    return keys


class ServiceSettings(BaseSettings):
    """Base for every service: broker, database, clock, logging and HTTP security."""

    # hide_input_in_errors: a validation error would otherwise print the whole environment,
    # API keys and passwords included.
    model_config = SettingsConfigDict(
        frozen=True,
        populate_by_name=True,
        extra="ignore",
        hide_input_in_errors=True,
        # `inf` and `nan` pass `gt=0`: a timeout that never ends, an interval that never comes.
        allow_inf_nan=False,
    )

    kafka_bootstrap_servers: Annotated[str, AfterValidator(_bootstrap_servers)] = Field(
        "127.0.0.1:9092",
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Comma-separated Kafka bootstrap servers, each `host:port`.",
    )
    topic_namespace: str = Field(
        "tierstream",
        validation_alias="TIERSTREAM_TOPIC_NAMESPACE",
        description="Prefix of every topic name (tests use a unique one per test). The "
        "database records the one its first scorer and actions start with, and they refuse to "
        "start with another (docs/OPERATIONS.md, Topic namespace).",
    )
    partitions: int = Field(
        6,
        ge=1,
        validation_alias="TIERSTREAM_PARTITIONS",
        description="Partition count of the event and tier-changed topics when created.",
    )
    replication_factor: int = Field(
        1,
        ge=1,
        validation_alias="TIERSTREAM_REPLICATION_FACTOR",
        description="Replication factor of the topics when created: 1 for the embedded broker "
        "or a single-broker cluster; use 3 in production, where with 1 a lost broker loses "
        "events that were already acknowledged.",
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        validation_alias="TIERSTREAM_MIN_INSYNC_REPLICAS",
        description="`min.insync.replicas` of the topics when created (2 with a replication "
        "factor of 3); unset keeps the broker's default.",
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        le=3_600_000,
        validation_alias="KAFKA_SESSION_TIMEOUT_MS",
        description="Consumer group session timeout; a first join waits about half of it.",
    )
    kafka_request_timeout_ms: int = Field(
        10_000,
        ge=100,
        le=3_600_000,
        validation_alias="KAFKA_REQUEST_TIMEOUT_MS",
        description="Upper bound for any single broker request.",
    )
    kafka_max_message_bytes: int = Field(
        1_048_588,
        ge=4096,
        validation_alias="KAFKA_MAX_MESSAGE_BYTES",
        description="The largest record batch the brokers accept (their `message.max.bytes`, or "
        "the topics' `max.message.bytes`; Apache Kafka's default is 1048588). Ingest answers 413 "
        "for an event whose record would be larger, instead of a 503 that a retry cannot pass; "
        "the scorer publishes such a tier change without its customer attributes.",
    )
    kafka_fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=5000,
        validation_alias="KAFKA_FETCH_MAX_WAIT_MS",
        description="Longest wait of a consumer fetch for data; low values cut end-to-end latency "
        "(some brokers, like the embedded one, answer a waiting fetch only at its deadline).",
    )
    kafka_security_protocol: Annotated[KafkaSecurityProtocol, BeforeValidator(_upper)] = Field(
        "PLAINTEXT",
        validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="How the services talk to the brokers: `PLAINTEXT`, `SSL` (TLS), "
        "`SASL_PLAINTEXT` or `SASL_SSL` (a login, over TLS: Confluent Cloud, MSK with SCRAM). "
        "TLS verifies the brokers' certificates and host names against KAFKA_SSL_CAFILE, or "
        "the system's trusted CAs when it is unset.",
    )
    kafka_sasl_mechanism: Annotated[KafkaSaslMechanism, BeforeValidator(_upper)] = Field(
        "PLAIN",
        validation_alias="KAFKA_SASL_MECHANISM",
        description="SASL mechanism with a SASL_* protocol: `PLAIN`, `SCRAM-SHA-256` or "
        "`SCRAM-SHA-512`.",
    )
    kafka_sasl_username: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        validation_alias="KAFKA_SASL_USERNAME",
        description="SASL user (required with a SASL_* protocol).",
    )
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""),
        validation_alias="KAFKA_SASL_PASSWORD",
        description="SASL password (required with a SASL_* protocol).",
    )
    kafka_ssl_cafile: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        validation_alias="KAFKA_SSL_CAFILE",
        description="PEM file of the CA certificates that sign the brokers' (SSL, SASL_SSL); "
        "unset: the system's trusted CAs.",
    )
    kafka_ssl_certfile: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        validation_alias="KAFKA_SSL_CERTFILE",
        description="PEM file of this client's certificate, for brokers that require one "
        "(mutual TLS); it may hold the private key too.",
    )
    kafka_ssl_keyfile: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        validation_alias="KAFKA_SSL_KEYFILE",
        description="PEM file of the private key of KAFKA_SSL_CERTFILE, when that file does not "
        "hold it.",
    )
    event_loop: Literal["asyncio", "uvloop", "auto"] = Field(
        "asyncio",
        validation_alias="TIERSTREAM_EVENT_LOOP",
        description="Event loop of the service process: asyncio's own, or uvloop (`uvloop`, "
        "or `auto`: uvloop when installed). uvloop is opt-in until a fault-test failure seen "
        "once with it is explained (docs/PERFORMANCE.md).",
    )
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias="DATABASE_URL",
        description="Postgres URL (postgresql://user:pass@host:port/db; also postgres:// or "
        "postgresql+DRIVER://, always used with asyncpg); the scorer, actions and the CLI's "
        "database commands refuse any other scheme.",
    )
    now: datetime | None = Field(
        None,
        validation_alias="TIERSTREAM_NOW",
        description="Fixed 'now' (ISO 8601 with zone) for replays, demos and tests"
        " (the `Date:` of actions' e-mails too).",
    )
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = Field(
        "INFO",
        validation_alias=AliasChoices("TIERSTREAM_LOG_LEVEL", "LOG_LEVEL"),
        description="Log level of the JSON logs (DEBUG, INFO, WARNING, ERROR; any case).",
    )
    host: str = Field(
        "127.0.0.1", description="Address the HTTP API binds to (0.0.0.0 in containers)."
    )
    port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP API.")
    api_keys: Annotated[SecretStr, NoDecode] = Field(
        SecretStr(""),
        validation_alias=TIERSTREAM_KEYS,
        description="Comma-separated `key` or `source:key` entries.",
    )
    allow_anonymous: bool = Field(
        False,
        validation_alias="TIERSTREAM_ALLOW_ANONYMOUS",
        description="Serve without API keys (development only).",
    )
    open_probes: bool = Field(
        True,
        validation_alias="TIERSTREAM_OPEN_PROBES",
        description="Serve /healthz, /readyz and /metrics without an API key.",
    )

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> ServiceSettings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                "TIERSTREAM_MIN_INSYNC_REPLICAS must not exceed TIERSTREAM_REPLICATION_FACTOR "
                "(no write could ever be acknowledged)"
            )
        return self

    def kafka_security_problem(self) -> str | None:
        """What the Kafka security settings lack (None: nothing). Checked by the settings
        of the services that build Kafka clients, at start: aiokafka failed at the first
        connection. Not here: `tierstream migrate` and the migrate Job never talk to
        Kafka, and have neither the SASL password nor the certificates."""
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            needs = "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            return f"KAFKA_SECURITY_PROTOCOL={protocol} needs {needs}"
        if protocol not in ("SSL", "SASL_SSL"):
            return None  # the certificate settings are not read
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            return "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the key's certificate)"
        files = {"KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
                 "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
                 "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile}  # fmt: skip
        for name, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                return f"{name}: no readable file at {path!r}"
        return None

    def _refuse_incomplete_kafka_security(self) -> None:
        if problem := self.kafka_security_problem():
            raise ValueError(problem)

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr) -> SecretStr:
        # At start, as a configuration error naming the variable (not a traceback when the
        # app is built); the messages name an entry's source, never its key.
        parse_api_keys(value.get_secret_value())
        return value

    @field_validator("now")
    @classmethod
    def _now_must_be_aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("TIERSTREAM_NOW must carry a timezone, e.g. 2026-01-01T00:00:00Z")
        return value

    def api_key_map(self) -> dict[str, str]:
        """The configured API keys as {key: source name}."""
        return parse_api_keys(self.api_keys.get_secret_value())

    def require_keys(self) -> None:
        """Refuse to start with no API keys unless anonymous access was asked for."""
        if not self.api_key_map() and not self.allow_anonymous:
            alias = type(self).model_fields["api_keys"].validation_alias
            own = alias.choices[0] if isinstance(alias, AliasChoices) else None
            if isinstance(own, str) and own in os.environ and os.environ.get(TIERSTREAM_KEYS):
                raise SystemExit(  # compose's `${X:-}` sets a variable to ""
                    f"{type(self).__name__}: {own} is set but holds no key, and it takes the"
                    f" place of {TIERSTREAM_KEYS}: unset it, or give it this service's keys"
                )
            raise SystemExit(
                f"{type(self).__name__}: no API keys configured; set {TIERSTREAM_KEYS} "
                "(or the service's own *_API_KEYS) or TIERSTREAM_ALLOW_ANONYMOUS=true"
            )


class DatabaseServiceSettings(ServiceSettings):
    """A service that keeps its state in Postgres and serves it through an HTTP API. The
    variables take the service's prefix."""

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        # At start, as a configuration error: a URL the driver cannot parse was a traceback,
        # and another database's (mysql://, http://) was taken for a Postgres one.
        if problem := url_problem(value):
            raise PydanticCustomError("database_url", "{problem}", {"problem": problem})
        return value

    db_pool_size: int = Field(
        8, ge=2, description="Postgres connections of this process's consuming and clock work."
    )
    api_db_pool_size: int = Field(
        4,
        ge=1,
        description="Postgres connections of this process's HTTP API, a pool of its own: "
        "requests never queue behind a batch, and a batch never waits for a request.",
    )
    api_db_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Longest wait of an HTTP request for each of: a connection (opening one "
        "included), each statement, handing the connection back. A Postgres that stops "
        "answering (a hung server, a network dropping packets) costs a request a few times "
        "this, then a 503 with Retry-After. Raise it if a query over many rows needs longer "
        "(the scorer's /v1/stats/tiers counts every customer).",
    )


class ConsumingServiceSettings(DatabaseServiceSettings):
    """A service with a fenced consumer and work decided by the clock (the scorer's time
    sweeps, actions' sequence steps), which waits for partitions to be read
    (shared/group_progress.py). The variables take the service's prefix."""

    @model_validator(mode="after")
    def _kafka_security(self) -> ConsumingServiceSettings:
        self._refuse_incomplete_kafka_security()
        return self

    ready_timeout_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Upper bound of each /readyz check (a database query, the broker's answer"
        " to the consumer's metadata request); both run at once.",
    )
    progress_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often each process records how far its consumer is through its "
        "partitions (table partition_progress), for the clock-driven work of every process "
        "of the group.",
    )
    progress_max_age_s: float = Field(
        10.0,
        gt=0,
        description="Clock-driven work holds the customers of a partition whose progress was "
        "last recorded longer ago than this (its owner died or is stuck). Must exceed the "
        "service's PROGRESS_INTERVAL_S; the work may miss up to this much of a dead owner's "
        "newest records.",
    )

    @model_validator(mode="after")
    def _progress_recorded_within_its_age(self) -> ConsumingServiceSettings:
        if self.progress_max_age_s <= self.progress_interval_s:
            prefix = str(self.model_config.get("env_prefix", ""))
            raise ValueError(
                f"{prefix}PROGRESS_MAX_AGE_S must exceed {prefix}PROGRESS_INTERVAL_S (every "
                "record would be stale before the next, and clock-driven work would never run)"
            )
        return self


def default_rules_file() -> Path:
    """The shipped rules: the scorer classifies with them, and the actions service checks the
    playbooks' classes against them, unless their settings name another file."""
    from shared.domain.rules import default_rules_path  # the domain is not loaded for settings

    return default_rules_path()


def settings_or_exit(cls: type[S]) -> S:
    """`cls()` from the environment; on bad values, one line per value naming its variable
    (never its content: it may be a key or a password), then exit 2."""
    try:
        return cls()
    except ValidationError as exc:
        for error in exc.errors():
            loc = error["loc"]
            variable = env_name(cls, str(loc[0])) if loc else "settings"
            print(f"invalid configuration: {variable}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable a settings field (or its alias, as errors name it) is read
    from."""
    info = cls.model_fields.get(field)
    if info is None:
        return field  # already the alias, e.g. TIERSTREAM_PARTITIONS
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()
