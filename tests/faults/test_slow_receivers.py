"""Scenario 8: a webhook receiver that never answers for some customers and an SMTP server
that keeps each message but answers it after the delivery timeout, while other changes keep
arriving.

Pass: changes produced after the hangs began are consumed and their webhooks delivered
while every hanging send is still on its first attempt (neither the consumer nor other
deliveries wait for them); each hanging webhook is cut at the configured timeout, retried
with back-off and the same idempotency key, and dead-lettered after the configured number
of attempts with the timeout as its last error; each slow e-mail is cut at the timeout too,
and recorded sent, unconfirmed, after its one attempt: one copy in the mailbox.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable

from shared.clock import FixedClock
from tests.faults.verify import eventually, rows
from tests.integration.actions.support import (
    NOW,
    SECRET,
    WebhookReceiver,
    actions_settings,
    produce_changes,
    running_actions,
    serving,
    smtp_server,
    tier_change,
)

TIMEOUT_S, ATTEMPTS, BACKOFF_S = 2.0, 3, 0.2
STAMP_SLACK_S = 0.25
HANGING = [f"hang-{i}" for i in range(2)]
SLOW_MAIL = [f"mail-{i}" for i in range(2)]
FAST = [f"fast-{i}" for i in range(10)]
Alerts = list[dict[str, object]]


async def test_hanging_receivers_block_nothing_and_time_out_and_retry_as_configured(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    receiver = WebhookReceiver(SECRET.encode(), hang_for=set(HANGING))
    with smtp_server(delay_s=2 * TIMEOUT_S) as (smtp_port, mailbox):
        async with serving(receiver):
            settings = actions_settings(
                base_env,
                webhook_url=f"{receiver.url}/alerts",
                webhook_secret=SECRET,
                smtp_host="127.0.0.1",
                smtp_port=smtp_port,
                alert_email_to="care@example.com",
                delivery_timeout_s=TIMEOUT_S,
                max_attempts=ATTEMPTS,
                backoff_base_s=BACKOFF_S,
                backoff_cap_s=BACKOFF_S * 2,
                dispatch_concurrency=8,
            )
            async with running_actions(settings, FixedClock(NOW)):
                hanging = [
                    tier_change(f"chg-{c}", c, "value_tier", "silver", "gold") for c in HANGING
                ]
                hanging += [
                    tier_change(
                        f"chg-{c}",
                        c,
                        "lifecycle_stage",
                        "established",
                        "at_risk",
                        email=f"{c}@example.com",
                    )
                    for c in SLOW_MAIL
                ]
                await produce_changes(kafka_bootstrap, topic_namespace, hanging)
                await eventually(
                    lambda: _all_hanging(receiver, database_url),
                    within=30,
                    what="every hanging send under way",
                )
                hang_started = time.monotonic()
                fast = [
                    tier_change(f"chg-{c}", c, "lifecycle_stage", "at_risk", "churned")
                    for c in FAST
                ]
                await produce_changes(kafka_bootstrap, topic_namespace, fast)
                await eventually(
                    lambda: _delivered(receiver, FAST),
                    within=TIMEOUT_S * 3,
                    what="the fast webhooks",
                )
                fast_done_after = time.monotonic() - hang_started
                first_attempts = await _attempts(database_url, [*HANGING, *SLOW_MAIL])
                await eventually(
                    lambda: _dead(database_url, HANGING),
                    within=ATTEMPTS * (TIMEOUT_S + 2) + 10,
                    what="hanging sends dead",
                )
    assert set(first_attempts.values()) == {1}, (first_attempts, fast_done_after)
    dead = await _alerts(database_url, HANGING)
    assert {(d["attempts"], d["status"]) for d in dead} == {(ATTEMPTS, "dead")}, [
        (d["customer_id"], d["channel"], d["attempts"], d["last_error"]) for d in dead
    ]
    assert all(f"{TIMEOUT_S:g} s" in str(d["last_error"]) for d in dead), dead
    mails = await _alerts(database_url, SLOW_MAIL)
    assert {(m["attempts"], m["status"]) for m in mails} == {(1, "sent")}, mails
    assert all(str(m["last_error"]).startswith("unconfirmed") for m in mails), mails
    gaps = _retry_gaps(receiver, HANGING)
    # Each attempt cut at the timeout, then retried after the back-off (at least half the
    # base, at most the cap, plus a dispatcher poll and scheduling slack on a busy machine).
    # The receiver stamps an attempt when its handler runs, on the loop the dispatcher shares,
    # so a stamp can be late by a scheduling delay: STAMP_SLACK_S allows for that, and a send
    # cut 0.15 s or more before its timeout still fails.
    low, high = TIMEOUT_S + BACKOFF_S / 2 - STAMP_SLACK_S, TIMEOUT_S + 2 * BACKOFF_S + 2.0
    assert all(low <= gap < high for gap in gaps), (low, high, gaps)
    ids = Counter(str(m["Message-ID"]) for m in mailbox)
    # Every message the slow server took carries its delivery's key (an alert's or a
    # step's), once: none was sent again.
    email_keys = {f"<{d['key']}@tierstream>" for d in await _emails(database_url, SLOW_MAIL)}
    assert set(ids) <= email_keys, (ids, email_keys)
    assert set(ids.values()) == {1}, ids
    print(
        f"\nFAULTS-OUTCOME slow-receivers: fast webhooks done {fast_done_after:.2f}s after the"
        f" hangs began; hanging attempts {[d['attempts'] for d in dead]}; retry gaps"
        f" {[round(g, 2) for g in gaps]}; slow SMTP copies per key {sorted(ids.values())}"
    )


async def _alerts(database_url: str, customers: Iterable[str]) -> Alerts:
    sql = (
        "SELECT customer_id, idempotency_key AS key, channel, status, attempts, last_error"
        " FROM actions.delivery WHERE kind = 'alert' AND customer_id = ANY($1::text[])"
    )
    return await rows(database_url, sql, list(customers))


async def _emails(database_url: str, customers: Iterable[str]) -> Alerts:
    sql = (
        "SELECT idempotency_key AS key FROM actions.delivery"
        " WHERE channel = 'email' AND customer_id = ANY($1::text[])"
    )
    return await rows(database_url, sql, list(customers))


async def _all_hanging(receiver: WebhookReceiver, database_url: str) -> bool:
    webhooks = {r.body["customer_id"] for r in receiver.requests} >= set(HANGING)
    mails = await _alerts(database_url, SLOW_MAIL)
    return webhooks and len(mails) == len(SLOW_MAIL) and all(m["attempts"] == 1 for m in mails)


async def _delivered(receiver: WebhookReceiver, customers: list[str]) -> bool:
    ok = {r.body["customer_id"] for r in receiver.requests if r.status == 200}
    return ok >= set(customers)


async def _attempts(database_url: str, customers: list[str]) -> dict[str, object]:
    return {str(a["customer_id"]): a["attempts"] for a in await _alerts(database_url, customers)}


async def _dead(database_url: str, customers: list[str]) -> bool:
    found = await _alerts(database_url, customers)
    return len(found) == len(customers) and all(a["status"] == "dead" for a in found)


def _retry_gaps(receiver: WebhookReceiver, customers: list[str]) -> list[float]:
    """Seconds between successive attempts of each hanging webhook (same idempotency key)."""
    gaps: list[float] = []
    for customer in customers:
        attempts = [r for r in receiver.requests if r.body["customer_id"] == customer]
        assert len({r.key for r in attempts}) == 1 and len(attempts) == ATTEMPTS, [
            (r.key, r.status, round(r.at, 2)) for r in attempts
        ]
        times = sorted(r.at for r in attempts)
        gaps += [b - a for a, b in itertools.pairwise(times)]
    return gaps
