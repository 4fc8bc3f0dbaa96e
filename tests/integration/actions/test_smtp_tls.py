"""STARTTLS against a real SMTP server (aiosmtpd, which offers no STARTTLS): a login is
never sent in clear, and without one the message still goes out."""

from __future__ import annotations

from typing import Any

import pytest

from services.actions.channels import Delivery, DeliveryError, SmtpChannel, SmtpConfig
from tests.integration.actions.support import smtp_server

FIELDS: dict[str, Any] = {
    "id": 1, "key": "k-1", "kind": "step", "customer_id": "c", "channel": "email",
    "recipient": "c@example.com", "subject": "Hello", "body": "Welcome",
    "payload": {"sequence": "welcome"},
}  # fmt: skip


async def test_a_login_is_never_sent_without_starttls_and_no_login_goes_without() -> None:
    # STARTTLS defaulted to off: ACTIONS_SMTP_USER and _PASSWORD crossed the network in
    # clear, and a server offering STARTTLS was never asked for it.
    delivery = Delivery(**FIELDS)
    with smtp_server() as (port, mailbox):
        login = SmtpConfig("127.0.0.1", port, "a@example.com", user="u", password="p",
                           timeout_s=5)  # fmt: skip
        with pytest.raises(DeliveryError, match="STARTTLS extension not supported"):
            await SmtpChannel(login).send(delivery)
        assert mailbox == []
        await SmtpChannel(SmtpConfig("127.0.0.1", port, "a@example.com", timeout_s=5)).send(
            delivery
        )
    assert [str(m["Subject"]) for m in mailbox] == ["Hello"]


@pytest.mark.parametrize(
    ("user", "starttls", "start_tls"),
    [(None, None, None), ("u", None, True), ("u", False, False), (None, True, True)],
)
def test_starttls_is_required_with_a_login_unless_turned_off(
    user: str | None, starttls: bool | None, start_tls: bool | None
) -> None:
    config = SmtpConfig("h", 25, "a@example.com", user=user, starttls=starttls)
    assert config.start_tls is start_tls
