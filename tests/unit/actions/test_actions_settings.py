"""Actions settings as docker-compose passes them: an empty value means "not configured"."""

from __future__ import annotations

import httpx
import pytest

from services.actions.main import build_channels, channel_config
from services.actions.settings import ActionsSettings

OPTIONAL = ("WEBHOOK_URL", "CRM_WEBHOOK_URL", "SMTP_HOST", "SMTP_USER", "SMTP_PASSWORD",
            "ALERT_EMAIL_TO")  # fmt: skip


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
        channels = build_channels(settings, client)
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
    async with httpx.AsyncClient() as client:
        channels = build_channels(settings, client)
    assert (config.webhook, channels.webhook is not None) == (True, True)
    assert (config.email, channels.email is not None) == (True, True)
    assert (config.crm, channels.crm) == (False, None)
    assert settings.smtp_password is not None and settings.smtp_password.get_secret_value() == "pw"


def test_an_empty_webhook_url_does_not_demand_a_secret_but_a_set_one_does() -> None:
    assert ActionsSettings(webhook_url="", webhook_secret="").webhook_url is None
    with pytest.raises(ValueError, match="ACTIONS_WEBHOOK_SECRET is required"):
        ActionsSettings(crm_webhook_url="http://crm.example.com", webhook_secret="")
