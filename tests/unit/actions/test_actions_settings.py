"""Actions settings: an empty value (as docker-compose passes it) means "not configured";
retention derived from the settings and the playbooks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from services.actions.channels import Delivery, SmtpChannel
from services.actions.main import build_channels, channel_config
from services.actions.retention import Retention, retention_for
from services.actions.settings import ActionsSettings
from shared.clock import FixedClock, SystemClock
from shared.domain.playbooks import default_playbooks_path, load_playbooks

OPTIONAL = ("WEBHOOK_URL", "CRM_WEBHOOK_URL", "SMTP_HOST", "SMTP_USER", "SMTP_PASSWORD",
            "ALERT_EMAIL_TO", "SMTP_REPLY_TO", "SMTP_LIST_UNSUBSCRIBE")  # fmt: skip


async def test_empty_urls_hosts_and_secrets_mean_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in OPTIONAL:
        monkeypatch.setenv(f"ACTIONS_{name}", "" if name != "SMTP_HOST" else "  ")
    monkeypatch.setenv("ACTIONS_WEBHOOK_SECRET", "")  # no secret needed: no webhook configured
    settings = ActionsSettings()
    assert [getattr(settings, n.lower()) for n in OPTIONAL] == [None] * len(OPTIONAL)
    config = channel_config(settings)
    assert (config.webhook, config.crm, config.email, config.alert_email_to) == (
        False, False, False, None)  # fmt: skip
    async with httpx.AsyncClient() as client:
        channels = build_channels(settings, client, SystemClock())
    assert (channels.webhook, channels.crm, channels.email) == (None, None, None)


async def test_set_values_configure_the_channels_the_same_way_in_both_places(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACTIONS_WEBHOOK_URL", "http://hooks.example.com/x")
    monkeypatch.setenv("ACTIONS_WEBHOOK_SECRET", "s")
    monkeypatch.setenv("ACTIONS_SMTP_HOST", "mail.example.com")
    monkeypatch.setenv("ACTIONS_SMTP_PASSWORD", "pw")
    settings = ActionsSettings()
    config = channel_config(settings)
    clock = FixedClock(datetime(2026, 5, 1, 8, tzinfo=UTC))
    async with httpx.AsyncClient() as client:
        channels = build_channels(settings, client, clock)
    assert (config.webhook, channels.webhook is not None) == (True, True)
    assert (config.email, channels.email is not None) == (True, True)
    assert isinstance(channels.email, SmtpChannel)  # dated by the service's clock
    mail = channels.email.message(Delivery(1, "k", "step", "c", "email", "c@example.com", "S",
                                           "text", {}))  # fmt: skip
    assert parsedate_to_datetime(str(mail["Date"])) == clock.now()
    assert (config.crm, channels.crm) == (False, None)
    assert settings.smtp_password is not None and settings.smtp_password.get_secret_value() == "pw"


def test_an_empty_webhook_url_does_not_demand_a_secret_but_a_set_one_does() -> None:
    assert ActionsSettings(webhook_url="", webhook_secret="").webhook_url is None
    with pytest.raises(ValueError, match="ACTIONS_WEBHOOK_SECRET is required"):
        ActionsSettings(crm_webhook_url="http://crm.example.com", webhook_secret="")


def test_retention_is_off_at_0_and_keeps_goal_events_for_the_longest_sequence_at_least(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    books = load_playbooks(default_playbooks_path())
    assert retention_for(ActionsSettings(inbox_retention_days=0), books) is None
    assert retention_for(ActionsSettings(), books) == Retention(30, timedelta(days=30))
    monkeypatch.setenv("ACTIONS_INBOX_RETENTION_DAYS", "7")
    # The welcome sequence's day-14 check-in outlives a 7-day inbox retention.
    assert retention_for(ActionsSettings(), books) == Retention(7, timedelta(days=14))


def test_steps_carry_reply_to_and_list_unsubscribe_and_alerts_no_unsubscribe() -> None:
    # The check-in mail says "reply to tell us": replies went to tierstream@localhost, and
    # customers had no way to stop the mails.
    unsubscribe = " <https://example.com/u> ,<mailto:stop@example.com?subject=stop>"
    settings = ActionsSettings(smtp_host="mail", smtp_reply_to="Care <care@example.com>",
                               smtp_list_unsubscribe=unsubscribe)  # fmt: skip
    assert settings.smtp_list_unsubscribe == (
        "<https://example.com/u>, <mailto:stop@example.com?subject=stop>"
    )
    email = build_channels(settings, httpx.AsyncClient(), SystemClock()).email
    assert isinstance(email, SmtpChannel)

    def delivery(kind: str) -> Delivery:
        return Delivery(id=1, key="k", kind=kind, customer_id="c", channel="email",
                        recipient="c@example.com", subject="s", body="b", payload={})  # fmt: skip

    step = email.message(delivery("step"))
    assert step["Reply-To"] == "Care <care@example.com>"
    assert step["List-Unsubscribe"] == settings.smtp_list_unsubscribe
    alert = email.message(delivery("alert"))
    assert alert["Reply-To"] == "Care <care@example.com>" and alert["List-Unsubscribe"] is None
    plain = build_channels(ActionsSettings(smtp_host="mail"), httpx.AsyncClient(), SystemClock())
    assert isinstance(plain.email, SmtpChannel)
    unset = plain.email.message(delivery("step"))
    assert unset["Reply-To"] is None and unset["List-Unsubscribe"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("smtp_reply_to", "a@example.com, b@example.com"),
        ("smtp_reply_to", "not an address"),
        ("smtp_list_unsubscribe", "https://example.com/u"),  # RFC 2369 wants <...>
        ("smtp_list_unsubscribe", "<http://example.com/u>"),  # in clear
        ("smtp_list_unsubscribe", "<javascript:alert(1)>"),
        ("smtp_list_unsubscribe", "<mailto:nobody>"),
    ],
)
def test_a_reply_to_or_unsubscribe_header_that_cannot_work_is_refused(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=name):
        ActionsSettings.model_validate({name: value})
