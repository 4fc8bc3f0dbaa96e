"""Channels that send a delivery out: a signed webhook, SMTP e-mail, or the log.

Every send carries the delivery's idempotency key (the `Idempotency-Key` header for
webhooks, the Message-ID for e-mail) so a resend after a crash can be recognised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from typing import Any, Protocol

import aiosmtplib
import httpx

from services.actions.effects import ChannelConfig
from shared.clock import Clock, SystemClock
from shared.domain.playbook_model import is_one_address
from shared.logging import get_logger

log = get_logger(__name__)

SIGNATURE_HEADER = "X-Tierstream-Signature"
RETRYABLE_STATUS = frozenset({408, 425, 429})


class DeliveryError(Exception):
    """A send failed; it is retried with back-off."""


class PermanentDeliveryError(DeliveryError):
    """A send failed in a way retrying cannot fix (e.g. 4xx, a refused recipient)."""


class UnconfirmedDelivery(Exception):  # an outcome, not an error to retry
    """The message went to the server, whose answer never came: it most likely went out.

    Recorded as sent, with this text as its note, and never sent again: an e-mail sent again
    reaches the inbox twice (mail servers do not drop a repeated Message-ID), while the
    server took the message in all but a few cases (RFC 1047).
    """


@dataclass(frozen=True)
class Delivery:
    """What a channel needs to send one message."""

    id: int
    key: str
    kind: str
    customer_id: str
    channel: str
    recipient: str | None
    subject: str
    body: str
    payload: dict[str, Any]
    playbook: str | None = None
    audience: str | None = None
    enrolment_id: int | None = None
    tier_change_id: str | None = None
    due_at: datetime | None = None  # business time it fell due (for the lateness metric)
    claim: int = 0  # which claim of it this is: the token its outcome is recorded under
    # Its channel or payload's `fallback` is no longer its row's (`Channels.at_send`): they
    # are recorded with its outcome.
    rerouted: bool = False

    def webhook_body(self) -> bytes:
        """Slack-compatible `text` plus the structured details, as compact JSON bytes."""
        document = {
            "text": self.body, "kind": self.kind, "customer_id": self.customer_id,
            "playbook": self.playbook, "audience": self.audience, "subject": self.subject or None,
            "idempotency_key": self.key, **self.payload,
        }  # fmt: skip
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


class Channel(Protocol):
    async def send(self, delivery: Delivery) -> None: ...


def redact_url(url: str) -> str:
    """Scheme and host of a URL only: its path and query may carry a token."""
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.host}/..." if parts.host else "<url>"


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookChannel:
    """POSTs the JSON body, signed, with the delivery's `Idempotency-Key`."""

    def __init__(self, client: httpx.AsyncClient, url: str, secret: bytes) -> None:
        self.client, self.url, self.secret = client, url, secret

    async def send(self, delivery: Delivery) -> None:
        body = delivery.webhook_body()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.key,
            SIGNATURE_HEADER: sign(self.secret, body),
            "User-Agent": "tierstream-actions",
            "Accept-Encoding": "identity",  # an error's excerpt is read raw, never inflated
        }
        try:
            # Streamed, and at most RESPONSE_READ_BYTES of the answer read: a receiver sending
            # gigabytes (or a small gzip that inflates to them) held them all in memory, and
            # inflating blocked the event loop past the delivery's timeout.
            async with self.client.stream(
                "POST", self.url, content=body, headers=headers
            ) as response:
                status, excerpt = response.status_code, await _excerpt(response)
        except httpx.HTTPError as exc:
            # The URL may be a secret (a Slack webhook's path is): keep it out of errors and logs.
            detail = str(exc).replace(self.url, redact_url(self.url))
            # No retry makes a URL without http(s) work (settings refuse one at start).
            permanent = isinstance(exc, httpx.UnsupportedProtocol)
            raise (PermanentDeliveryError if permanent else DeliveryError)(
                f"{type(exc).__name__}: {detail}"
            ) from exc
        if 200 <= status < 300:
            return
        message = f"HTTP {status}: {excerpt}"
        # A redirect is not followed (a signed body must not go where the URL did not say)
        # and will not go away by itself: the URL needs fixing, as for a 4xx.
        if 300 <= status < 500 and status not in RETRYABLE_STATUS:
            raise PermanentDeliveryError(message)
        raise DeliveryError(message)


RESPONSE_READ_BYTES = 4096  # of a receiver's answer: enough for its error message


async def _excerpt(response: httpx.Response) -> str:
    """The start of the answer's body as text (at most 200 characters), reading no more than
    RESPONSE_READ_BYTES of it as it came (no decompression)."""
    head = b""
    async for chunk in response.aiter_raw():
        head += chunk
        if len(head) >= RESPONSE_READ_BYTES:
            break
    return head[:RESPONSE_READ_BYTES].decode("utf-8", errors="replace")[:200]


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    user: str | None = None
    password: str | None = None
    starttls: bool | None = None  # None: when the server offers it; required with a login
    timeout_s: float = 10.0
    reply_to: str | None = None
    list_unsubscribe: str | None = None  # sequence steps' header, checked by the settings

    @property
    def start_tls(self) -> bool | None:
        """aiosmtplib's `start_tls`: True requires STARTTLS, None uses it when offered."""
        return True if self.starttls is None and self.user else self.starttls


class SmtpChannel:
    """Sends an HTML + plain-text e-mail; the Message-ID derives from the idempotency key.

    The `Date:` header (RFC 5322 requires one) is read from `clock` when the message is
    built, the service's clock: TIERSTREAM_NOW dates e-mails as it dates everything else.
    """

    def __init__(self, config: SmtpConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()

    def message(self, delivery: Delivery) -> EmailMessage:
        """The e-mail for a delivery (bodies are HTML-escaped when rendered)."""
        if not delivery.recipient:
            raise PermanentDeliveryError("no recipient address")
        # One recipient, as the playbook format says: a customer attribute such as
        # "a@x, b@y" must not send one customer's message to two mailboxes.
        # The playbook check's rule, for a rendered recipient (e.g. {{ customer.email }}); it
        # refuses RFC 2047 encoded words, whose decoded display name may list others.
        if not is_one_address(delivery.recipient):
            # Not echoed: errors are logged, and logs hold no customer data (SECURITY.md).
            raise PermanentDeliveryError("the recipient is not one e-mail address")
        [(name, address)] = getaddresses([delivery.recipient])
        msg = EmailMessage()
        msg["From"] = self.config.sender
        # Rebuilt from its parts, so the name is quoted as one name whatever it holds.
        msg["To"] = Address(display_name=name, addr_spec=address)
        msg["Subject"] = delivery.subject or "Tierstream"
        # In UTC ("+0000"): the server's zone says nothing to the recipient.
        msg["Date"] = format_datetime(self.clock.now().astimezone(UTC), usegmt=False)
        msg["Message-ID"] = f"<{delivery.key}@tierstream>"
        msg["X-Tierstream-Idempotency-Key"] = delivery.key
        if self.config.reply_to:
            msg["Reply-To"] = self.config.reply_to
        if self.config.list_unsubscribe and delivery.kind == "step":  # to customers, not teams
            msg["List-Unsubscribe"] = self.config.list_unsubscribe
        msg.set_content(html.unescape(delivery.body))
        paragraphs = "".join(f"<p>{p}</p>" for p in delivery.body.split("\n") if p.strip())
        msg.add_alternative(f"<html><body>{paragraphs}</body></html>", subtype="html")
        return msg

    async def send(self, delivery: Delivery) -> None:
        """Send the e-mail; `UnconfirmedDelivery` when the server had the message but its
        answer never came (a timeout, the dispatcher's included, or a lost connection)."""
        c = self.config
        message = self.message(delivery)
        client = _HandOverSMTP(
            hostname=c.host, port=c.port, username=c.user, password=c.password,
            start_tls=c.start_tls, timeout=c.timeout_s,
        )  # fmt: skip
        try:
            await client.connect()
            await client.send_message(message)
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
        except aiosmtplib.SMTPResponseException as exc:  # an answer: the server refused it
            raise _smtp_error([exc], delivery) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:  # the one recipient, refused at RCPT
            raise _smtp_error(exc.recipients, delivery, "recipient refused: ") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            if client.handed_over:
                raise UnconfirmedDelivery(_unconfirmed(f"{type(exc).__name__}: {exc}")) from exc
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError as exc:
            # The dispatcher's timeout (asyncio.wait_for) cancels the send. After the hand-over
            # a retry would send the e-mail twice, so the send ends with its outcome instead:
            # wait_for raises what the cancelled send raised, in place of TimeoutError.
            if client.handed_over:
                raise UnconfirmedDelivery(_unconfirmed("no answer in time")) from exc
            raise
        finally:
            # Not `async with` / aiosmtplib.send: on cancellation (the dispatcher's timeout)
            # they QUIT and wait for a stuck server, so an attempt outlived its timeout and
            # its lease, and the delivery was claimed again while still being sent.
            client.close()


class _HandOverSMTP(aiosmtplib.SMTP):
    """An SMTP client that notes when the message is handed over: `data` sends the DATA
    command and then the message, so past its start the server may have it."""

    handed_over = False

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.handed_over = True
        return await super().data(message, **kwargs)


def _unconfirmed(cause: str) -> str:
    return f"unconfirmed: the server has the message but did not confirm it ({cause}); not resent"


def _smtp_error(
    replies: Sequence[aiosmtplib.SMTPResponseException], delivery: Delivery, prefix: str = ""
) -> DeliveryError:
    """Permanent when every reply is a 5xx; a 4xx (greylisting, a full mailbox, a rate
    limit) is worth a retry. The text leaves the recipient's address out: it is logged."""
    text = prefix + "; ".join(f"SMTP {r.code}: {r.message}" for r in replies)
    [(_, address)] = getaddresses([delivery.recipient or ""])  # one: `message` checked it
    for name in sorted({delivery.recipient or "", address} - {""}, key=len, reverse=True):
        text = re.sub(re.escape(name), "<recipient>", text, flags=re.IGNORECASE)
    permanent = bool(replies) and all(500 <= r.code < 600 for r in replies)
    return (PermanentDeliveryError if permanent else DeliveryError)(text)


class LogChannel:
    """Writes the delivery to the log (development, and channels that are not configured).

    Subject and text are rendered with customer fields, so they, like the customer id, only
    appear at debug level; the info line says what was sent, for which change.
    """

    async def send(self, delivery: Delivery) -> None:
        log.info(
            "delivery written to the log", kind=delivery.kind, playbook=delivery.playbook,
            audience=delivery.audience, tier_change_id=delivery.tier_change_id,
            idempotency_key=delivery.key,
        )  # fmt: skip
        log.debug(
            "delivery content", idempotency_key=delivery.key, customer_id=delivery.customer_id,
            subject=delivery.subject, text=delivery.body[:500],
        )  # fmt: skip


class Channels:
    """The channel for each delivery: alerts and steps by their channel, task pushes to the CRM."""

    def __init__(
        self, *, webhook: Channel | None = None, crm: Channel | None = None,
        email: Channel | None = None, log_channel: Channel | None = None,
    ) -> None:  # fmt: skip
        self.webhook, self.crm, self.email = webhook, crm, email
        self.log = log_channel or LogChannel()

    def config(self) -> ChannelConfig:
        """Which of the channels a playbook can ask for this process has."""
        return ChannelConfig(webhook=self.webhook is not None, email=self.email is not None,
                             crm=self.crm is not None)  # fmt: skip

    def at_send(self, delivery: Delivery) -> Delivery:
        """The delivery as this process sends it: one planned for the log because its channel
        was not configured then goes through that channel if this process has it now
        (`ChannelConfig.at_send`); its new channel and payload are recorded with its outcome."""
        channel, payload = self.config().at_send(delivery.channel, delivery.recipient,
                                                 delivery.payload)  # fmt: skip
        if (channel, payload) == (delivery.channel, delivery.payload):
            return delivery
        return replace(delivery, channel=channel, payload=payload, rerouted=True)

    def for_delivery(self, delivery: Delivery) -> Channel:
        """The channel to use; a channel no longer configured is a permanent failure."""
        if delivery.channel == "log":
            return self.log
        found = {"webhook": self.crm if delivery.kind == "task" else self.webhook,
                 "email": self.email}.get(delivery.channel)  # fmt: skip
        if found is None:
            raise PermanentDeliveryError(f"channel {delivery.channel!r} is not configured")
        return found
