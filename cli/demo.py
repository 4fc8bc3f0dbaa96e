"""A small stream of demo events for `tierstream run`, so a newcomer sees tiers and actions."""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx


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
    """Post the demo events to ingest; exits 0 when all were accepted."""
    url = os.environ.get("TIERSTREAM_INGEST_URL", "http://127.0.0.1:8080")
    key = os.environ.get("TIERSTREAM_API_KEY", "")
    now_raw = os.environ.get("TIERSTREAM_NOW")
    now = datetime.fromisoformat(now_raw) if now_raw else datetime.now(UTC)
    events = demo_events(now)
    headers = {"Authorization": f"Bearer {key}"}
    for attempt in range(30):
        try:
            response = httpx.post(
                f"{url}/v1/events/batch", json={"events": events}, headers=headers, timeout=10
            )
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 202:
            print(f"demo: {len(events)} events accepted", flush=True)
            return 0
        time.sleep(min(2.0, 0.2 * (attempt + 1)))
    print("demo: ingest did not accept the demo events", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
