"""Publish accepted events to Kafka: keyed by customer, CloudEvents headers, bounded time.

The producer is created lazily and thrown away after any broker failure: a fresh producer
re-bootstraps from the configured servers, so ingest recovers when the broker returns
without being restarted, and a half-broken client never lingers. The retired producer is
closed in the background and its successor waits for that, so two producers never write
the same partition at once (the embedded broker fails such concurrent appends).

A request's events go through the producer's batch path (`shared.kafka_batches`): one
batch per partition, keyed and partitioned exactly as `send()` would.

A failure means "not acknowledged", not "not written": some events of a failed request may
still reach the topic (at-least-once). Clients resend with the same event_ids and the
scorer de-duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from shared.contracts import (
    EVENT_MODELS,
    CustomerLoggedIn,
    PurchaseMade,
    SupportTicketUpdated,
    event_ce_type,
)
from shared.gcpause import gc_paused
from shared.kafka import Headers, TraceHeaders, cloudevent_headers, make_producer
from shared.kafka_batches import KeyPartitioner, Record, build_batches, send_batches, size_over
from shared.logging import get_logger
from shared.settings import ServiceSettings
from shared.topics import Topics

log = get_logger(__name__)
Event = PurchaseMade | CustomerLoggedIn | SupportTicketUpdated
Work = Callable[[AIOKafkaProducer], Awaitable[None]]


class BrokerUnavailableError(Exception):
    """The broker did not acknowledge every event in time: nothing may be reported accepted."""


class EventTooLargeError(Exception):
    """An event whose Kafka record the broker would refuse, whenever it is sent: `index` is
    its place in the request (None when the broker refused a record of the request)."""

    def __init__(self, index: int | None, size: int | None, limit: int) -> None:
        super().__init__(f"record of {size} bytes over the limit of {limit}")
        self.index, self.size, self.limit = index, size, limit


class Publisher(Protocol):
    """Port: where accepted events go."""

    @property
    def available(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, events: Sequence[Event], *, trace: TraceHeaders = ()) -> None: ...

    async def check(self) -> bool: ...


def record_for(event: Event, trace: TraceHeaders = ()) -> tuple[bytes, bytes, Headers]:
    """Key, value and CloudEvents binary-mode headers (plus any W3C trace context) of one
    event's Kafka record."""
    headers = cloudevent_headers(
        ce_id=event.event_id,
        ce_source=event.source or "unknown",
        ce_type=event_ce_type(event.type),
        ce_time=event.occurred_at,
        extra=list(trace),
    )
    return event.customer_id.encode(), event_json(event), headers


def event_json(event: Event) -> bytes:
    """The event's JSON, byte for byte what `model_dump_json()` writes, without a str between."""
    return event.__pydantic_serializer__.to_json(event)


class KafkaPublisher:
    """Publishes events with acks=all; any failure or timeout raises BrokerUnavailableError,
    a record over the broker's size limit EventTooLargeError (before anything is sent)."""

    def __init__(
        self, settings: ServiceSettings, *, timeout_s: float, check_timeout_s: float = 2.0
    ) -> None:
        self._settings = settings
        topics = Topics(settings.topic_namespace)
        self._topic_of = {kind: topics.for_event(kind) for kind in EVENT_MODELS}
        self._partitioner = KeyPartitioner()
        self._timeout_s = timeout_s
        self._check_timeout_s = check_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Task[AIOKafkaProducer] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._available = False

    @property
    def available(self) -> bool:
        """Whether the last contact with the broker succeeded."""
        return self._available

    async def start(self) -> None:
        """Connect now if the broker is there; a missing broker is retried on first use."""
        with contextlib.suppress(BrokerUnavailableError):
            await self._guarded(_connected, self._timeout_s)

    async def stop(self) -> None:
        """Flush and close the producer and any producer retired after a failure."""
        if (starting := self._starting) is not None:
            starting.cancel()
            await asyncio.wait({starting})  # its start, cancelled, closes what it opened
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._close(producer)
        if self._retiring:
            await asyncio.wait(set(self._retiring))
        self._available = False

    async def publish(self, events: Sequence[Event], *, trace: TraceHeaders = ()) -> None:
        """Send every event and wait for the broker's ack of each, within the timeout."""
        if events:
            await self._guarded(partial(self._send_all, events, trace), self._timeout_s)

    async def check(self) -> bool:
        """Ask the broker for cluster metadata: the readiness probe. A probe that fails never
        retires the producer: its bound is shorter than a publish's, and a slow but working
        broker would have cost the requests in flight their producer."""
        try:
            await self._guarded(_fetch_metadata, self._check_timeout_s, retire=False)
        except BrokerUnavailableError:
            return False
        return True

    async def _send_all(
        self, events: Sequence[Event], trace: TraceHeaders, producer: AIOKafkaProducer
    ) -> None:
        topics = {self._topic_of[event.type] for event in events}
        # Waits for each topic's metadata, as send() does.
        partitions = {topic: sorted(await producer.partitions_for(topic)) for topic in topics}
        with gc_paused():
            batches = build_batches(producer, self._grouped(events, partitions, trace))
        await asyncio.gather(*await send_batches(producer, batches))

    def _grouped(
        self, events: Sequence[Event], partitions: dict[str, list[int]], trace: TraceHeaders
    ) -> dict[tuple[str, int], list[Record]]:
        """Each event's record under its topic and partition, in request order."""
        limit = self._settings.kafka_max_message_bytes
        records = []
        for index, event in enumerate(events):
            record = record_for(event, trace)
            if (size := size_over(record, limit)) is not None:
                raise EventTooLargeError(index, size, limit)
            records.append((self._topic_of[event.type], record))
        return self._partitioner.grouped(records, partitions)

    async def _guarded(self, work: Work, timeout_s: float, *, retire: bool = True) -> None:
        """Run `work` on the producer within `timeout_s`; on failure retire that producer
        (unless `retire` is False)."""
        used: list[AIOKafkaProducer] = []

        async def attempt() -> None:
            used.append(await self._ensure_producer())
            await work(used[0])

        try:
            await asyncio.wait_for(attempt(), timeout_s)
        except (MessageSizeTooLargeError, RecordListTooLargeError) as exc:
            # The broker answered (it is there); its limit is below KAFKA_MAX_MESSAGE_BYTES.
            self._available = True
            log.warning("broker refused a record as too large", error=type(exc).__name__,
                        setting=self._settings.kafka_max_message_bytes)  # fmt: skip
            raise EventTooLargeError(None, None, self._settings.kafka_max_message_bytes) from exc
        except (KafkaError, OSError, TimeoutError) as exc:
            self._available = False
            if used and retire:
                self._retire(used[0])
            log.warning("broker unavailable", error=type(exc).__name__)
            raise BrokerUnavailableError(str(exc) or type(exc).__name__) from exc
        self._available = True

    async def _ensure_producer(self) -> AIOKafkaProducer:
        """The started producer; starting one in a task of its own, which requests wait for
        shielded: a request's deadline ends its wait, not the connection attempt. Cancelled
        with each request, a start slower than the publish timeout (a distant or slow broker)
        began again from nothing for every request, and ingest never connected."""
        if self._producer is not None:
            return self._producer
        if self._starting is None:
            self._starting = asyncio.create_task(self._start_producer(), name="start-producer")
            self._starting.add_done_callback(self._started)
        return await asyncio.shield(self._starting)

    def _started(self, task: asyncio.Task[AIOKafkaProducer]) -> None:
        # Runs before any waiter resumes (the first callback added): they find it set.
        self._starting = None
        if not task.cancelled() and task.exception() is None:  # the exception is retrieved
            self._producer = task.result()

    async def _start_producer(self) -> AIOKafkaProducer:
        if self._retiring:  # one producer at a time: the old one flushes first
            await asyncio.wait(set(self._retiring))
        producer = make_producer(self._settings)
        try:
            await asyncio.wait_for(
                producer.start(), self._settings.kafka_request_timeout_ms / 1000 + 5
            )
        except BaseException:
            await self._close(producer)
            raise
        return producer

    def _retire(self, producer: AIOKafkaProducer) -> None:
        """Drop a failed producer; close it in the background (its flush may wait)."""
        if self._producer is not producer:
            return  # already retired by a concurrent failure
        self._producer = None
        task = asyncio.create_task(self._close(producer), name="retire-producer")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        # A stopping producer waits for pending batches to expire (request timeout) at most.
        try:
            await asyncio.wait_for(
                producer.stop(), self._settings.kafka_request_timeout_ms / 1000 + 5
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("producer close failed; closing it by force", error=type(exc).__name__)
            await _force_close(producer)


async def _force_close(producer: AIOKafkaProducer) -> None:
    """Stop what a `stop()` cut short by its bound left running. aiokafka's stop() marks the
    producer closed before it flushes, so it is never run again, and without this the sender
    went on (a batch in flight could still be written beside the successor's, which the
    embedded broker fails) and the connections stayed open for good. Private parts of
    aiokafka: there is no public way."""
    with contextlib.suppress(Exception):
        await producer._sender.close()  # cancels the sender task and waits for it
    with contextlib.suppress(Exception):
        await producer.client.close()


async def _connected(producer: AIOKafkaProducer) -> None:
    """Nothing to do: obtaining a started producer is the work."""


async def _fetch_metadata(producer: AIOKafkaProducer) -> None:
    await producer.client.fetch_all_metadata()
