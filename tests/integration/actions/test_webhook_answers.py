"""A webhook receiver's answer is read only as far as its error message needs: one that sent
gigabytes (or a small gzip inflating to them) was held whole in memory, and inflating it
blocked the event loop past the delivery's timeout."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from services.actions.channels import (
    RESPONSE_READ_BYTES,
    Delivery,
    DeliveryError,
    PermanentDeliveryError,
    WebhookChannel,
)

FIELDS: dict[str, Any] = {
    "id": 1, "key": "k-1", "kind": "alert", "customer_id": "c", "channel": "webhook",
    "recipient": None, "subject": "Hello", "body": "Welcome", "payload": {},
}  # fmt: skip
BOMB = gzip.compress(bytes(256 * 1024 * 1024))  # 256 MiB of zeros, about 250 KiB on the wire
ENDLESS = 512 * 1024 * 1024  # "endless": far more than any reader should take (bounded, so
# that a reader taking it all fails the test rather than the machine)


@asynccontextmanager
async def answering(head: bytes, body: bytes | None) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering every request with `head`, then `body`, or endless bytes when None;
    yields its URL and, per connection, how many body bytes it wrote before the client left."""
    written: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sent = 0
        try:
            writer.write(head)
            if body is not None:
                writer.write(body)
                sent = len(body)
                await writer.drain()
            else:
                chunk = b"x" * 65536
                while sent < ENDLESS:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            written.append(sent)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/hook", written


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"HTTP/1.1 500 Oops\r\nContent-Length: " + str(ENDLESS).encode() + b"\r\n\r\n", None),
        (b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n", None),  # until it closes
        (
            b"HTTP/1.1 500 Oops\r\nContent-Encoding: gzip\r\nContent-Length: "
            + str(len(BOMB)).encode()
            + b"\r\n\r\n",
            BOMB,
        ),
    ],
    ids=["huge", "endless", "gzip bomb"],
)
async def test_an_error_answer_is_read_no_further_than_its_message(
    head: bytes, body: bytes | None
) -> None:
    async with answering(head, body) as (url, written), httpx.AsyncClient(timeout=10) as client:
        channel = WebhookChannel(client, url, b"secret")
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"^HTTP 500: ") as caught:
            await channel.send(Delivery(**FIELDS))
        took = time.monotonic() - started
        for _ in range(100):  # the server notices the client left
            if written:
                break
            await asyncio.sleep(0.05)
    assert len(str(caught.value)) <= len("HTTP 500: ") + 200
    # Within one read's reach of the limit (socket buffers hold a few MiB), not gigabytes.
    assert body is not None or written[0] < 64 * 1024 * 1024, written
    assert took < 5, took  # not the delivery timeout: nothing inflated, nothing buffered
    if body is BOMB:  # its bytes as sent (gzip's magic number first), not inflated
        assert str(caught.value).startswith("HTTP 500: \x1f")
    assert RESPONSE_READ_BYTES <= 64 * 1024


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_a_permanent_error_not_followed_nor_retried(status: int) -> None:
    # It was retried until the attempts ran out: it will not go away by itself.
    head = f"HTTP/1.1 {status} Moved\r\nLocation: http://169.254.169.254/\r\n"
    answer = (head + "Content-Length: 0\r\n\r\n").encode()
    async with answering(answer, b"") as (url, _), httpx.AsyncClient(timeout=10) as client:
        with pytest.raises(PermanentDeliveryError, match=f"^HTTP {status}: "):
            await WebhookChannel(client, url, b"secret").send(Delivery(**FIELDS))
