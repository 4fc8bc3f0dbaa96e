"""Demo events for `tierstream run`: a few hand-made customers (one certain to become gold)
and a small simulated population, so a newcomer sees tiers, migrations and actions."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from cli.api_client import ApiClient, ApiError, Endpoints, reference_now
from cli.simulate import send_events
from cli.simulation import simulate_population

DEMO_SEED = 2026
DEMO_CUSTOMERS = 200
DEMO_DAYS = 400


def demo_events(now: datetime) -> list[dict[str, Any]]:
    """A VIP who becomes gold, a newcomer, a lapsed buyer and a login-only lead."""
    run = uuid.uuid4().hex[:6]
    events: list[dict[str, Any]] = []

    def add(kind: str, customer: str, days_ago: float, **fields: Any) -> None:
        events.append(
            {
                "type": kind,
                "event_id": f"demo-{run}-{len(events)}",
                "customer_id": customer,
                "occurred_at": (now - timedelta(days=days_ago)).isoformat(),
                **fields,
            }
        )

    for i in range(10):
        add(
            "purchase",
            "demo-vip",
            45 - i * 4.5,
            order_id=f"vip-{run}-{i}",
            amount="1000.00",
            currency="EUR",
        )
    add(
        "purchase",
        "demo-newcomer",
        2,
        order_id=f"new-{run}",
        amount=str(Decimal("89.90")),
        currency="EUR",
    )
    add("login", "demo-newcomer", 1, channel="web")
    add("purchase", "demo-lapsed", 120, order_id=f"lapsed-{run}", amount="450.00", currency="EUR")
    add("support", "demo-lapsed", 100, ticket_id=f"t-{run}", action="opened", nps=4)
    add("login", "demo-lead", 3, channel="app")
    return events


def main() -> int:
    """Post the demo customers and a simulated population to ingest; 0 when all were accepted."""
    now = reference_now()
    population = simulate_population(
        seed=DEMO_SEED, customers=DEMO_CUSTOMERS, days=DEMO_DAYS, end=now, prefix="demo-c"
    )
    events = demo_events(now) + population.events  # the hand-made customers first
    with ApiClient(Endpoints.from_env(), retry_for=90) as client:
        try:
            sent = send_events(client, events, batch_size=1000)
        except ApiError as exc:
            print(f"demo: ingest did not accept the demo events: {exc}", file=sys.stderr)
            return 1
    print(
        f"demo: {sent} events accepted (demo-vip and friends, plus {DEMO_CUSTOMERS} simulated "
        f"customers over {DEMO_DAYS} days)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
