"""The benchmark's events: the simulator's seeded population as contract models and records.

Payloads are exactly what ingest publishes: the contract model's JSON, keyed by customer,
with CloudEvents headers (`services.ingest.publisher.record_for`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cli.simulation import simulate_population
from services.ingest.publisher import record_for
from shared.contracts import CustomerEvent, customer_event_adapter
from shared.kafka import Headers

Event = CustomerEvent
# Events per customer-day of the simulator's default population (measured: 676k events
# for 20,000 customers over 365 days); used to size the simulated period.
EVENTS_PER_CUSTOMER_DAY = 0.0926
SOURCE = "bench"


@dataclass(frozen=True)
class Record:
    """One Kafka record as ingest would publish it."""

    event_type: str
    key: bytes
    value: bytes
    headers: Headers


def simulated_events(*, seed: int, customers: int, count: int, end: datetime) -> list[Event]:
    """At least `count` events of at least `customers` customers with events, in event time.

    The simulated period is sized for `count`; customers who joined too late to act in it
    have no events, so the population grows until enough customers do. Every customer's
    history inside the period is whole (nothing is cut off at `count`).
    """
    days = 1.05 * count / (customers * EVENTS_PER_CUSTOMER_DAY)
    size = customers
    while True:
        # The ids of earlier sessions (their default prefix), so runs stay comparable.
        population = simulate_population(
            seed=seed, customers=size, days=days, end=end, prefix=f"sim{seed}-"
        )
        active = len({e["customer_id"] for e in population.events})
        if len(population.events) >= count and active >= customers:
            break
        days *= 1.2 if len(population.events) < count else 1.0
        size += max(0, customers - active) * 11 // 10
    return [
        customer_event_adapter.validate_python({**e, "source": SOURCE}) for e in population.events
    ]


def first_purchases(prefix: str, count: int, *, at: datetime) -> list[dict[str, object]]:
    """`count` first purchases of fresh customers: each one is certain to change a tier."""
    stamp = at.astimezone(UTC).isoformat()
    return [
        {
            "type": "purchase",
            "event_id": f"{prefix}-e{i}",
            "customer_id": f"{prefix}-c{i}",
            "occurred_at": stamp,
            "order_id": f"{prefix}-o{i}",
            "amount": str(Decimal(20 + i % 500)),
            "currency": "EUR",
        }
        for i in range(count)
    ]


def returning_customers(
    prefix: str, customers: int, count: int, *, at: datetime, seed: int, event_prefix: str
) -> list[dict[str, object]]:
    """`count` logins (4 in 5) and repeat purchases of the customers that
    `first_purchases(prefix, customers)` created, chosen at random (seeded)."""
    rng = random.Random(seed)
    stamp = at.astimezone(UTC).isoformat()
    events: list[dict[str, object]] = []
    for i in range(count):
        customer = f"{prefix}-c{rng.randrange(customers)}"
        common = {"event_id": f"{event_prefix}{i}", "customer_id": customer, "occurred_at": stamp}
        if rng.random() < 0.8:
            events.append({"type": "login", **common, "channel": rng.choice(("web", "app"))})
        else:
            events.append(
                {"type": "purchase", **common, "order_id": f"{event_prefix}o{i}",
                 "amount": str(Decimal(rng.randrange(5, 400))), "currency": "EUR"}
            )  # fmt: skip
    return events


def to_records(events: Sequence[Event]) -> list[Record]:
    """The records ingest would publish for `events` (the topic follows the event type)."""
    records = []
    for event in events:
        key, value, headers = record_for(event)
        records.append(Record(event.type, key, value, headers))
    return records


def event_mix(events: Sequence[Event]) -> dict[str, int]:
    """Events per type."""
    return dict(Counter(e.type for e in events))


def distinct_customers(events: Sequence[Event]) -> int:
    return len({e.customer_id for e in events})


def recent_end() -> datetime:
    """The end of the simulated period: a minute ago (ingest refuses future events)."""
    return datetime.now(UTC) - timedelta(minutes=1)
