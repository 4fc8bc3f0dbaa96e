"""Actions settings: env prefix `ACTIONS_`, plus the shared variables of `ServiceSettings`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.domain.playbook_model import is_one_address
from shared.settings import ConsumingServiceSettings, default_rules_file
from shared.topics import ACTIONS_GROUP


def _default_playbooks_file() -> Path:
    from shared.domain.playbooks import default_playbooks_path

    return default_playbooks_path()


# Optional settings where an empty value means "not configured" (None), never "configured as ''".
_OPTIONAL = (
    "webhook_url", "crm_webhook_url", "smtp_host", "smtp_user", "smtp_password", "alert_email_to",
    "smtp_reply_to", "smtp_list_unsubscribe",
)  # fmt: skip
_UNSUBSCRIBE = re.compile(r"<(mailto:[^<>\s]+@[^<>\s]+|https://[^<>\s]+)>")


class ActionsSettings(ConsumingServiceSettings):
    """Everything the actions service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="ACTIONS_", frozen=True, populate_by_name=True, extra="ignore"
    )

    port: int = Field(8082, ge=1, le=65535, description="Port of the HTTP API.")
    api_keys: Annotated[SecretStr, NoDecode] = Field(
        SecretStr(""),
        validation_alias=AliasChoices("ACTIONS_API_KEYS", "TIERSTREAM_API_KEYS"),
        description="Comma-separated `key` or `source:key` entries.",
    )
    playbooks_file: Path = Field(
        default_factory=_default_playbooks_file,
        description="YAML playbooks file; validated at start (an invalid one stops the service).",
    )
    # The scorer's variable is read too: where both run from one environment (`tierstream run`,
    # a shared .env), setting it once keeps the two on the same classes.
    rules_file: Path = Field(
        default_factory=default_rules_file,
        validation_alias=AliasChoices("ACTIONS_RULES_FILE", "SCORER_RULES_FILE"),
        description="The rules file the scorer classifies with (unset: SCORER_RULES_FILE, then"
        " the shipped rules). Every class the playbooks name in a `from` or `to` must be one"
        " its dimension declares there, or the service does not start.",
    )
    webhook_url: str | None = Field(
        None,
        description="Where webhook alerts go (Slack-compatible JSON), an absolute http(s) URL;"
        " unset or empty: log instead.",
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC-SHA256 key of X-Tierstream-Signature, which signs alert webhooks and "
        "CRM task pushes alike (required when either URL is set).",
    )
    crm_webhook_url: str | None = Field(
        None,
        description="Tasks are pushed here when set, when created and when the API assigns,"
        " completes or cancels them: an absolute http(s) URL (empty: unset), signed with"
        " ACTIONS_WEBHOOK_SECRET, which it then requires.",
    )
    smtp_host: str | None = Field(
        None, description="SMTP server; unset or empty: e-mail goes to the log."
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP server port.")
    smtp_user: str | None = Field(None, description="SMTP login user (no login when unset).")
    smtp_password: SecretStr | None = Field(None, description="SMTP login password.")
    smtp_from: str = Field("tierstream@localhost", description="Sender address of e-mails.")
    smtp_starttls: bool | None = Field(
        None,
        description="Upgrade the SMTP connection with STARTTLS: true requires it, false never"
        " tries it. Unset: required when ACTIONS_SMTP_USER is set (a password never crosses"
        " the network in clear), otherwise used whenever the server offers it.",
    )
    alert_email_to: str | None = Field(
        None, description="Recipient of e-mail alerts that name none (e.g. the care team)."
    )
    smtp_reply_to: str | None = Field(
        None,
        description="Reply-To of e-mails (one address), where customers' answers to sequence"
        " steps go; unset: replies go to ACTIONS_SMTP_FROM.",
    )
    smtp_list_unsubscribe: str | None = Field(
        None,
        description="List-Unsubscribe header of sequence steps' e-mails (RFC 2369), e.g."
        " `<mailto:unsubscribe@example.com>` or `<https://example.com/unsubscribe>, <mailto:"
        "...>`: how a customer stops them (bulk senders must give one). Unset: none.",
    )
    dispatch_interval_s: float = Field(0.5, gt=0, description="Dispatcher poll when idle.")
    step_max_lag: int = Field(
        1000,
        ge=0,
        description="Due sequence steps of a customer wait while the consumer of its "
        "partition, in any process, is more than this many records behind (or has not "
        "recorded its progress since the last rebalance): the unread records may hold the "
        "purchase or the tier change that ends the sequence.",
    )
    dispatch_concurrency: int = Field(
        16,
        ge=1,
        description="Deliveries in flight per sender (alerts and task pushes; sequence steps);"
        " one route (a kind of delivery through one channel, e.g. task pushes to the CRM) never"
        " takes the last quarter of them (from 4 up; below, one route may take them all), so a"
        " receiver that hangs cannot hold up the others.",
    )
    # At most the largest Postgres integer: `actions.delivery.attempts` counts in one, so a
    # delivery failing for ever would break the claim statement ("integer out of range") of
    # every send round before reaching a larger limit.
    max_attempts: int = Field(
        8, ge=1, le=2**31 - 1, description="Attempts before a delivery is dead-lettered."
    )
    backoff_base_s: float = Field(
        2.0, gt=0,
        description="Retry delay before jitter, doubled per failed attempt: a retry waits half"
        " of it plus a random part of the other half (the first after 1-2 s by default).",
    )  # fmt: skip
    backoff_cap_s: float = Field(
        600.0, gt=0,
        description="The most the delay before jitter grows to: a retry waits between half"
        " of it and all of it.",
    )  # fmt: skip
    delivery_timeout_s: float = Field(10.0, gt=0, description="Upper bound of one send attempt.")
    lease_margin_s: float = Field(
        5.0,
        ge=0,
        description="A claimed delivery is re-sent when its sender is silent this long"
        " after the timeout (the process died mid-send).",
    )
    consumer_group: str = Field(
        ACTIONS_GROUP, description="Kafka consumer group (offsets are kept in Postgres per group)."
    )
    batch_max_records: int = Field(1000, ge=1, description="Records per consumed batch.")
    poll_timeout_ms: int = Field(500, ge=10, description="Longest wait for a batch.")
    gauge_interval_s: float = Field(15.0, gt=0, description="Refresh of task/enrolment gauges.")
    inbox_retention_days: int = Field(
        30,
        ge=0,
        le=36_500,  # past this, `now - days` leaves the calendar: use 0
        description="Days a consumed tier change's id stays in the de-duplication inbox"
        " (at most 36,500); 0 keeps it forever. Pruning is safe because the consumed offsets"
        " are stored in Postgres with the inbox (the service never re-reads what it applied),"
        " so a duplicate can only come from the topic within its Kafka retention: keep this at"
        " least that long. Goal events (latest purchases) older than this and than the longest"
        " sequence are pruned too.",
    )
    prune_interval_s: float = Field(
        3600.0, gt=0, description="How often the retention loop deletes expired rows."
    )
    migrate: bool = Field(
        True,
        description="Apply the actions schema migrations at start (`false`: a schema behind"
        " this release's latest revision stops the start; run `tierstream migrate` first).",
    )

    @field_validator(*_OPTIONAL, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # docker-compose passes "" for a variable that is not set: that means "not configured".
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @field_validator("smtp_reply_to")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        if value is not None and not is_one_address(value):
            raise ValueError("must be one e-mail address")
        return value

    @field_validator("smtp_list_unsubscribe")
    @classmethod
    def _unsubscribe_links(cls, value: str | None) -> str | None:
        if value is None:
            return None
        links = [part.strip() for part in value.split(",")]
        if not all(_UNSUBSCRIBE.fullmatch(link) for link in links):
            raise ValueError("must be one or more <mailto:...> or <https://...>, comma-separated")
        return ", ".join(links)

    @field_validator("webhook_url", "crm_webhook_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        # Refused at start: every send to "hooks.slack.com/..." would fail, and not say why
        # until the first alert. The message never repeats the value (its path may be a key).
        if value is None:
            return None
        try:
            url = httpx.URL(value.strip())
        except httpx.InvalidURL:
            raise ValueError("is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value.strip()

    @model_validator(mode="after")
    def _signed_webhooks(self) -> ActionsSettings:
        signed = self.webhook_url is not None or self.crm_webhook_url is not None
        if signed and not self.webhook_secret.get_secret_value():
            raise ValueError("ACTIONS_WEBHOOK_SECRET is required when a webhook URL is set")
        return self

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery stays invisible to other senders."""
        return self.delivery_timeout_s + self.lease_margin_s
