"""A synthetic customer population as event dicts: pure, seeded, no I/O.

Each customer draws an archetype and a life plan (phases with their own habits), then
purchases, logins and support tickets arrive as Poisson processes inside those phases.
Every customer has its own `random.Random` seeded from (seed, index), so its behaviour is
the same whatever the population size around it. The same arguments (seed, size, period and
end time) give the same events, ids included; the default customer prefix carries a hash of
them, so a run with other arguments, or ending at another time, makes other customers
instead of a second history for the same ones.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

Event = dict[str, Any]


@dataclass(frozen=True)
class Habits:
    """How a customer behaves during one phase of its life."""

    purchases_per_year: float
    basket_median: float  # EUR; baskets are log-normal around it
    basket_sigma: float
    logins_per_month: float
    tickets_per_year: float
    nps_mean: float


@dataclass(frozen=True)
class Archetype:
    """A kind of customer: its share of the population and its habits."""

    name: str
    share: float
    habits: Habits
    description: str


QUIET = Habits(0, 0, 0, 0, 0, 7)
WHALE = Habits(24, 700, 0.5, 12, 2, 9)
REGULAR = Habits(8, 90, 0.6, 5, 1, 8)
OCCASIONAL = Habits(2.5, 60, 0.8, 1.5, 0.5, 7)

ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("whale", 0.03, WHALE, "big, frequent baskets all along"),
    Archetype("regular", 0.25, REGULAR, "buys monthly or so, logs in weekly"),
    Archetype("occasional", 0.22, OCCASIONAL, "a few purchases a year"),
    Archetype("one_off", 0.13, Habits(0, 50, 0.7, 0.5, 0.3, 6), "exactly one purchase"),
    Archetype("browser", 0.15, Habits(0, 0, 0, 3, 0.2, 7), "logs in, never buys (a lead)"),
    Archetype("churner", 0.13, Habits(6, 70, 0.6, 4, 2, 4), "active, then silent for good"),
    Archetype("returner", 0.06, REGULAR, "active, a long silence, then comes back"),
    Archetype("riser", 0.03, OCCASIONAL, "occasional at first, later a big spender"),
)
REGIONS = ("north", "south", "east", "west")
COUNTRIES = ("DE", "FR", "NL", "ES", "IT", "GB")


@dataclass(frozen=True)
class Phase:
    """A stretch of a customer's life, in days since the start of the period."""

    start: float
    end: float
    habits: Habits


@dataclass
class _Customer:
    """Generation state of one customer (its rng, events and counters)."""

    customer_id: str
    tag: str
    rng: random.Random
    origin: datetime
    events: list[Event] = field(default_factory=list)


def pick_archetype(rng: random.Random) -> Archetype:
    """Draw an archetype by population share."""
    return rng.choices(ARCHETYPES, weights=[a.share for a in ARCHETYPES])[0]


def plan_phases(archetype: Archetype, rng: random.Random, days: float) -> list[Phase]:
    """The customer's life plan over [0, days): when it is active and with which habits."""
    join = 0.0 if rng.random() < 0.5 else rng.uniform(0, 0.85 * days)
    habits = archetype.habits
    match archetype.name:
        case "churner":
            stop = join + rng.uniform(0.03, 0.45) * (days - join)
            return [Phase(join, stop, habits)]
        case "returner":
            back = max(join, days - rng.uniform(3, 40))
            gone = max(join, back - rng.uniform(100, 200))
            return [Phase(join, gone, habits), Phase(back, days, habits)]
        case "riser":
            switch = join + rng.uniform(0.3, 0.7) * (days - join)
            return [Phase(join, switch, habits), Phase(switch, days, WHALE)]
        case _:
            return [Phase(join, days, habits)]


def poisson_times(rng: random.Random, start: float, end: float, per_day: float) -> list[float]:
    """Arrival times of a Poisson process with `per_day` rate inside [start, end)."""
    times: list[float] = []
    if per_day <= 0:
        return times
    t = start + rng.expovariate(per_day)
    while t < end:
        times.append(t)
        t += rng.expovariate(per_day)
    return times


def basket_amount(rng: random.Random, habits: Habits) -> Decimal:
    """A log-normal basket around the phase's median, in cents, at least 1.00."""
    value = habits.basket_median * math.exp(rng.gauss(0, habits.basket_sigma))
    return max(Decimal("1.00"), Decimal(round(value * 100)) / 100)


def _add(c: _Customer, kind: str, at: float, **fields: Any) -> None:
    occurred = c.origin + timedelta(seconds=round(at * 86_400))
    c.events.append({"type": kind, "customer_id": c.customer_id, "occurred_at": occurred, **fields})


def _purchases(c: _Customer, phase: Phase, vigour: float, count: int) -> int:
    rate = phase.habits.purchases_per_year * vigour / 365
    for at in poisson_times(c.rng, phase.start, phase.end, rate):
        count += 1
        amount = basket_amount(c.rng, phase.habits)
        order = f"{c.customer_id}-o{count}"
        _add(c, "purchase", at, order_id=order, amount=str(amount), currency="EUR")
    return count


def _logins(c: _Customer, phase: Phase, vigour: float, channel: str, country: str) -> None:
    rate = phase.habits.logins_per_month * vigour / 30
    for at in poisson_times(c.rng, phase.start, phase.end, rate):
        _add(c, "login", at, channel=channel, country=country)


def _tickets(c: _Customer, phase: Phase, count: int) -> int:
    for at in poisson_times(c.rng, phase.start, phase.end, phase.habits.tickets_per_year / 365):
        count += 1
        ticket = f"{c.customer_id}-t{count}"
        _add(c, "support", at, ticket_id=ticket, action="opened")
        resolved = at + c.rng.uniform(0.1, 4)
        if resolved < phase.end:
            nps = round(min(10, max(0, c.rng.gauss(phase.habits.nps_mean, 1.5))))
            csat = min(5, max(1, round(nps / 2)))
            fields = {"ticket_id": ticket, "action": "resolved", "nps": nps, "satisfaction": csat}
            _add(c, "support", resolved, **fields)
    return count


def _one_purchase(c: _Customer, phase: Phase) -> None:
    at = c.rng.uniform(phase.start, phase.end)
    amount = basket_amount(c.rng, phase.habits)
    _add(c, "purchase", at, order_id=f"{c.customer_id}-o1", amount=str(amount), currency="EUR")


def _finish(c: _Customer) -> list[Event]:
    """Time-order the customer's events, give them stable ids, attributes on the first."""
    c.events.sort(key=lambda e: (e["occurred_at"], e["type"]))
    for seq, event in enumerate(c.events):
        event["event_id"] = f"{c.customer_id}-{c.tag}-{seq:05d}"
        event["occurred_at"] = event["occurred_at"].isoformat()
    if c.events:
        region = c.rng.choice(REGIONS)
        segment = "b2b" if c.rng.random() < 0.3 else "b2c"
        c.events[0]["attributes"] = {"region": region, "segment": segment}
    return c.events


def simulate_customer(
    seed: int, index: int, *, days: float, end: datetime, prefix: str, tag: str
) -> tuple[str, list[Event]]:
    """One customer's archetype name and time-ordered events."""
    rng = random.Random(f"{seed}:{index}")
    archetype = pick_archetype(rng)
    c = _Customer(f"{prefix}{index:05d}", tag, rng, end - timedelta(days=days))
    vigour = math.exp(rng.gauss(0, 0.3))  # some customers are simply more active
    channel = rng.choice(("web", "web", "app"))
    country = rng.choice(COUNTRIES)
    orders = tickets = 0
    phases = plan_phases(archetype, rng, days)
    for phase in phases:
        orders = _purchases(c, phase, vigour, orders)
        _logins(c, phase, vigour, channel, country)
        tickets = _tickets(c, phase, tickets)
    if archetype.name == "one_off":
        _one_purchase(c, phases[0])
    return archetype.name, _finish(c)


def run_tag(seed: int, customers: int, days: float, end: datetime) -> str:
    """A short hash of the parameters: other parameters never reuse these event ids (nor,
    with the default prefix, these customers)."""
    raw = f"{seed}|{customers}|{days}|{end.isoformat()}".encode()
    return hashlib.sha256(raw).hexdigest()[:6]


@dataclass(frozen=True)
class Population:
    """The generated events (time-ordered), each customer's archetype, their id prefix."""

    events: list[Event]
    archetypes: dict[str, str]
    prefix: str = ""

    def counts(self) -> Counter[str]:
        """Events per type."""
        return Counter(e["type"] for e in self.events)


def simulate_population(
    *,
    seed: int,
    customers: int,
    days: float,
    end: datetime,
    prefix: str | None = None,
    on_customer: Callable[[int], None] = lambda done: None,
) -> Population:
    """The whole population's events ending at `end`; identical for identical arguments.

    Customer ids are `prefix` and a number; the default prefix, `sim<seed>-<run tag>-`,
    differs for other arguments, so the same customer never gets two simulated histories.
    `on_customer` hears how many customers are done after each one (for a progress bar).
    """
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    end = end.astimezone(UTC)  # one offset everywhere, so ISO strings sort by time
    tag = run_tag(seed, customers, days, end)
    prefix = f"sim{seed}-{tag}-" if prefix is None else prefix
    events: list[Event] = []
    archetypes: dict[str, str] = {}
    for index in range(customers):
        name, own = simulate_customer(seed, index, days=days, end=end, prefix=prefix, tag=tag)
        archetypes[f"{prefix}{index:05d}"] = name
        events.extend(own)
        on_customer(index + 1)
    events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    return Population(events, archetypes, prefix)
