"""Workloads for the fault suite: mixed events, a throttled stream onto the topics."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka import AIOKafkaProducer

from shared.contracts import CustomerLoggedIn, PurchaseMade, SupportAction, SupportTicketUpdated
from shared.domain.state import Event
from shared.topics import Topics

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AMOUNTS = ("9.99", "45", "120.50", "480", "1250", "3999.95")


def mixed_events(count: int, customers: int, *, seed: int, prefix: str = "e") -> list[Event]:
    """Purchases, logins and support updates (some with NPS) over the last ~14 months.

    A skewed customer choice gives some customers many events (gold, established) and
    many customers few (new, lead, at_risk, churned), so every class and transition shows up.
    """
    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(count):
        customer = f"cust-{int(customers * rng.random() ** 1.6)}"
        at = NOW - timedelta(days=rng.uniform(0, 420), seconds=rng.randrange(86_400))
        kind = rng.random()
        if kind < 0.5:
            events.append(_purchase(f"{prefix}{i}", customer, at, rng))
        elif kind < 0.8:
            events.append(
                CustomerLoggedIn(
                    event_id=f"{prefix}{i}",
                    customer_id=customer,
                    occurred_at=at,
                    channel=rng.choice(["web", "app"]),
                )
            )
        else:
            events.append(_support(f"{prefix}{i}", customer, at, rng))
    return events


def _purchase(event_id: str, customer: str, at: datetime, rng: random.Random) -> PurchaseMade:
    return PurchaseMade(
        event_id=event_id,
        customer_id=customer,
        occurred_at=at,
        order_id=f"o-{event_id}",
        amount=Decimal(rng.choice(AMOUNTS)),
        currency="EUR",
    )


def _support(
    event_id: str, customer: str, at: datetime, rng: random.Random
) -> SupportTicketUpdated:
    return SupportTicketUpdated(
        event_id=event_id,
        customer_id=customer,
        occurred_at=at,
        ticket_id=f"t-{customer}-{rng.randrange(3)}",
        action=rng.choice(list(SupportAction)),
        nps=rng.choice([None, None, 2, 5, 7, 9, 10]),
    )


def with_redeliveries(events: Sequence[Event], share: float, *, seed: int) -> list[Event]:
    """The events plus a share of them sent again, shuffled: what at-least-once upstreams do."""
    rng = random.Random(seed)
    sent = [*events, *rng.sample(list(events), int(len(events) * share))]
    rng.shuffle(sent)
    return sent


@dataclass
class Stream:
    """Produces events onto their topics in chunks, pausing between chunks (a steady stream)."""

    bootstrap: str
    namespace: str
    events: Sequence[Event]
    chunk: int = 100
    pause_s: float = 0.05
    produced: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Send everything, each chunk acknowledged by the broker before the next."""
        topics = Topics(self.namespace)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=False, acks="all", linger_ms=5
        )
        await producer.start()
        try:
            for start in range(0, len(self.events), self.chunk):
                part = self.events[start : start + self.chunk]
                futures = [
                    await producer.send(
                        topics.for_event(e.type),
                        value=e.model_dump_json().encode(),
                        key=e.customer_id.encode(),
                    )
                    for e in part
                ]
                await asyncio.gather(*futures)
                self.produced += len(part)
                await asyncio.sleep(self.pause_s)
        finally:
            await producer.stop()
            self.done.set()

    @property
    def fraction(self) -> float:
        return self.produced / max(1, len(self.events))
