"""Real parts for actions tests: a signed-webhook receiver, an SMTP server, producers, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from email.message import Message
from typing import Any, TypeVar

import asyncpg
import httpx
import uvicorn
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.actions.main import run
from services.actions.settings import ActionsSettings
from shared.clock import FixedClock
from shared.contracts import TIER_CHANGED_TYPE, PurchaseMade, TierChanged
from shared.db import asyncpg_dsn
from shared.embedded import free_port
from shared.kafka import cloudevent_headers
from shared.topics import Topics
from shared.tracing import Tracer

T = TypeVar("T")
NOW = datetime.fromisoformat("2026-03-02T10:00:00+00:00")
SECRET = "webhook-test-secret"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROUNDS = "tierstream_actions_dispatch_rounds_total"


def tier_change(
    change_id: str, customer_id: str, dimension: str, from_: str | None, to: str,
    *, at: datetime = NOW, email: str | None = None,
) -> TierChanged:  # fmt: skip
    """A tier change as the scorer emits it."""
    attributes: dict[str, Any] = {"email": email} if email else {}
    return TierChanged.model_validate({
        "id": change_id, "customer_id": customer_id, "dimension": dimension, "from": from_,
        "to": to, "cause": "event", "rule": f"{dimension}.{to}", "features": {"m_score": 4},
        "rules_version": "test", "occurred_at": at, "emitted_at": at, "attributes": attributes,
    })  # fmt: skip


def purchase(event_id: str, customer_id: str, at: datetime) -> PurchaseMade:
    return PurchaseMade(
        event_id=event_id, customer_id=customer_id, occurred_at=at, order_id=f"o-{event_id}",
        amount=Decimal("120"), currency="EUR",
    )  # fmt: skip


async def produce_changes(
    bootstrap: str, namespace: str, changes: Iterable[TierChanged],
    trace: list[tuple[str, bytes]] | None = None,
) -> None:  # fmt: skip
    """Publish tier changes as the scorer's relay does: keyed by customer, CloudEvents headers
    (plus the W3C `trace` headers, when given)."""
    topic = Topics(namespace).tier_changed
    records = [
        (c.customer_id.encode(), c.to_json(), cloudevent_headers(
            ce_id=c.id, ce_source="tierstream/scorer", ce_type=TIER_CHANGED_TYPE,
            ce_time=c.emitted_at, extra=trace))
        for c in changes
    ]  # fmt: skip
    await produce_raw(bootstrap, topic, records)


async def produce_raw(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]],
) -> None:
    """Publish raw (key, value, headers) records, acknowledged by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value=v, key=k, headers=h) for k, v, h in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def actions_settings(env: dict[str, str], **overrides: Any) -> ActionsSettings:
    """Settings from the test's environment dict (aliases) plus fast loop intervals."""
    fields: dict[str, Any] = {
        **env,
        "consumer_group": f"actions-{env['TIERSTREAM_TOPIC_NAMESPACE']}",
        "port": free_port(), "dispatch_interval_s": 0.05, "poll_timeout_ms": 100,
        "gauge_interval_s": 0.2, "backoff_base_s": 0.05, "backoff_cap_s": 0.2,
        "delivery_timeout_s": 2.0, "lease_margin_s": 0.5, "progress_interval_s": 0.1,
    }  # fmt: skip
    fields.update(overrides)
    return ActionsSettings(**fields)


@contextlib.asynccontextmanager
async def running_actions(
    settings: ActionsSettings, clock: FixedClock, tracer: Tracer | None = None
) -> AsyncIterator[str]:
    """The actions service's run() as a task of this loop; yields its base URL."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop, clock=clock, tracer=tracer))
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_port(settings.port, task)
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_port(port: int, task: asyncio.Task[None], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if task.done():
            task.result()  # raises what stopped the service
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, within: float = 20.0, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def wait_rounds(
    count: Callable[[], Awaitable[float]], *, rounds: int = 2, within: float = 20.0
) -> None:
    """Until a sender has completed `rounds` more claim rounds than when this is called.

    Call it after setting the clock: the round in progress then may have read the clock
    before, so with 2 (the default) at least one whole round has claimed with the new one.
    """
    start = await count()

    async def risen() -> bool:
        return await count() >= start + rounds

    await eventually(risen, within=within, what=f"{rounds} more claim rounds (from {start:g})")


def served_rounds(url: str, sender: str) -> Callable[[], Awaitable[float]]:
    """Reads a running service's claim rounds of `sender` (dispatcher, scheduler) from /metrics."""

    async def count() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            text = (await client.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == ROUNDS and sample.labels == {"sender": sender}:
                    return float(sample.value)
        raise AssertionError(f"{ROUNDS}{{sender={sender!r}}} is not exported")

    return count


async def fetch(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one query against the test database."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


# --- a real HTTP receiver ----------------------------------------------------------------------


@dataclass
class Received:
    key: str
    path: str
    body: dict[str, Any]
    signature_ok: bool
    status: int
    at: float


@dataclass
class WebhookReceiver:
    """A real HTTP server that checks signatures and counts the successes (200) of each
    idempotency key: every one, so a key sent again after a 200 shows as 2.

    `fail_first` answers 503 to the first N attempts of each key; customers in `hang_for` get
    no answer at all; `delay_s` slows every answer down.
    """

    secret: bytes
    fail_first: int = 0
    hang_for: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    successes: dict[str, int] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    # Set when serving ends, so hanging handlers return instead of dying as cancelled tasks.
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw = await request.body()
        response = await self._answer(request, raw)
        await response(scope, receive, send)

    async def _answer(self, request: Request, raw: bytes) -> Response:
        expected = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(request.headers.get("x-tierstream-signature", ""), expected)
        key = request.headers.get("idempotency-key", "")
        body = json.loads(raw)
        attempts = sum(1 for r in self.requests if r.key == key)
        status = 401 if not signed else 503 if attempts < self.fail_first else 200
        self.requests.append(
            Received(key, request.url.path, body, signed, status, time.monotonic())
        )
        if body.get("customer_id") in self.hang_for:
            await self.released.wait()
            return JSONResponse({"ok": False}, status_code=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if status == 200:
            duplicate = key in self.successes
            self.successes[key] = self.successes.get(key, 0) + 1
            return JSONResponse({"ok": True, "duplicate": duplicate})
        return JSONResponse({"ok": False}, status_code=status)

    def keys(self, path: str | None = None) -> set[str]:
        return {r.key for r in self.requests if path is None or r.path == path}


@contextlib.asynccontextmanager
async def serving(receiver: WebhookReceiver) -> AsyncIterator[WebhookReceiver]:
    """Serve the receiver with uvicorn on its port for the duration of the block."""
    config = uvicorn.Config(receiver, host="127.0.0.1", port=receiver.port, log_config=None,
                            lifespan="off", timeout_graceful_shutdown=1)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


# --- a real SMTP server ------------------------------------------------------------------------


class _Mailbox:
    def __init__(self, delay_s: float, rcpt_reply: str | None, rcpt_delay_s: float) -> None:
        self.messages: list[Message] = []
        self.delay_s, self.rcpt_reply, self.rcpt_delay_s = delay_s, rcpt_reply, rcpt_delay_s

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_delay_s:
            await asyncio.sleep(self.rcpt_delay_s)
        if self.rcpt_reply is not None:
            return self.rcpt_reply.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Kept first, as a mail server queues it: a client gone before the answer changes
        # nothing.
        self.messages.append(message_from_bytes(envelope.content))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server(
    delay_s: float = 0.0, rcpt_reply: str | None = None, rcpt_delay_s: float = 0.0
) -> Any:
    """An aiosmtpd server on a free port; yields (port, list of received messages).

    `delay_s`: how long it takes to answer a message it received (and kept);
    `rcpt_delay_s`: to answer a recipient. `rcpt_reply`: its answer to every recipient instead
    of accepting it (`{address}` is the recipient's)."""
    mailbox = _Mailbox(delay_s, rcpt_reply, rcpt_delay_s)
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, mailbox.messages
    finally:
        controller.stop()


def subjects(messages: list[Message]) -> list[str]:
    return [str(m["Subject"]) for m in messages]


DAY = timedelta(days=1)
