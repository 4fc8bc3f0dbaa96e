"""SIGKILL of the actions process in the middle of dispatching, then a restart: every delivery
ends with exactly one recorded success, and resends carry the same idempotency key: only a
delivery that was in flight at the kill may reach the receiver twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from shared.embedded import free_port
from tests.integration.actions.support import (
    NOW,
    SECRET,
    WebhookReceiver,
    eventually,
    fetch,
    produce_changes,
    serving,
    smtp_server,
    tier_change,
)

CUSTOMERS = 16
ROOT = Path(__file__).resolve().parents[3]
# Deliveries claimed (an attempt counted) but not recorded sent: at a kill, the ones in
# flight. Only they can have reached the receiver (or the mail server) and be sent again
# after the restart. (Neither ever fails, so a pending delivery with attempts was claimed
# and not finished.)
IN_FLIGHT = (
    "SELECT idempotency_key AS key, kind FROM actions.delivery"
    " WHERE status = 'pending' AND attempts > 0"
)


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.actions"], env=env, cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_sigkill_mid_dispatch_then_restart_records_exactly_one_success_per_delivery(
    base_env: dict[str, str], kafka_bootstrap: str, topic_namespace: str, actions_db: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    database_url = actions_db
    receiver = WebhookReceiver(SECRET.encode(), delay_s=0.25)
    log = tmp_path / "actions.log"
    with smtp_server(delay_s=0.05) as (smtp_port, mailbox):
        async with serving(receiver):
            env = {
                **os.environ, **base_env,
                "ACTIONS_PORT": str(free_port()),
                "ACTIONS_CONSUMER_GROUP": f"actions-{topic_namespace}",
                "ACTIONS_WEBHOOK_URL": f"{receiver.url}/alerts",
                "ACTIONS_CRM_WEBHOOK_URL": f"{receiver.url}/crm",
                "ACTIONS_WEBHOOK_SECRET": SECRET,
                "ACTIONS_SMTP_HOST": "127.0.0.1", "ACTIONS_SMTP_PORT": str(smtp_port),
                "ACTIONS_DISPATCH_CONCURRENCY": "2", "ACTIONS_DISPATCH_INTERVAL_S": "0.05",
                "ACTIONS_DELIVERY_TIMEOUT_S": "2", "ACTIONS_LEASE_MARGIN_S": "0.5",
                "ACTIONS_BACKOFF_BASE_S": "0.1", "ACTIONS_POLL_TIMEOUT_MS": "100",
                "TIERSTREAM_NOW": NOW.isoformat(),
            }  # fmt: skip
            changes = [
                tier_change(f"chg-{i}", f"cust-{i}", "value_tier", "silver", "gold",
                            email=f"cust-{i}@example.com")
                for i in range(CUSTOMERS)
            ]  # fmt: skip
            await produce_changes(kafka_bootstrap, topic_namespace, changes)
            proc = _start(env, log)
            try:
                count = "SELECT count(*) AS n FROM actions.task"

                async def consumed_and_sending() -> bool:
                    tasks = (await fetch(database_url, count))[0]["n"] if proc.poll() is None else 0
                    return tasks == CUSTOMERS and len(receiver.requests) >= 6

                await eventually(consumed_and_sending, within=40, what="dispatch under way")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                webhooks_at_kill = len(receiver.keys())
                claimed = await fetch(database_url, IN_FLIGHT)
                in_flight = {r["key"] for r in claimed if r["kind"] != "step"}
                mails_in_flight = {
                    f"<{r['key']}@tierstream>" for r in claimed if r["kind"] == "step"
                }
                assert webhooks_at_kill < 2 * CUSTOMERS, "the kill came after dispatching ended"
                proc = _start(env, log)
                pending = "SELECT count(*) AS n FROM actions.delivery WHERE status = 'pending'"

                async def all_sent() -> bool:
                    left: int = (await fetch(database_url, pending))[0]["n"]
                    return left == CUSTOMERS  # only the day-7 steps are not due yet

                await eventually(all_sent, within=60, what="every due delivery sent")
            finally:
                proc.kill()
                proc.wait(10)
                print(log.read_text()[-3000:])

    rows = await fetch(database_url, "SELECT idempotency_key AS key, kind, status, step_index,"
                       " attempts FROM actions.delivery ORDER BY id")  # fmt: skip
    due = [r for r in rows if r["kind"] != "step" or r["step_index"] == 0]
    assert Counter(r["kind"] for r in due) == {
        "alert": CUSTOMERS,
        "task": CUSTOMERS,
        "step": CUSTOMERS,
    }
    assert {r["status"] for r in due} == {"sent"}
    webhooks = {r["key"] for r in due if r["kind"] != "step"}
    # Every webhook delivery arrived, one success each; a resend after the kill reused its key.
    assert receiver.keys() == webhooks
    # A delivery in flight at the kill went once after the restart, and maybe once before.
    twice = {key for key, n in receiver.successes.items() if n == 2}
    assert twice <= in_flight <= webhooks, "a delivery not in flight at the kill went twice"
    assert receiver.successes == {key: 2 if key in twice else 1 for key in webhooks}
    assert all(r.signature_ok for r in receiver.requests)
    steps = {f"<{r['key']}@tierstream>" for r in due if r["kind"] == "step"}
    # The same for e-mail steps: each once, twice only if it was being sent at the kill.
    mails = Counter(str(m["Message-ID"]) for m in mailbox)
    assert set(mails) == steps
    mailed_twice = {message_id for message_id, n in mails.items() if n == 2}
    assert mailed_twice <= mails_in_flight, "a step not in flight at the kill was mailed twice"
    assert mails == {m: 2 if m in mailed_twice else 1 for m in steps}
    tasks = await fetch(database_url, "SELECT customer_id FROM actions.task")
    assert sorted(t["customer_id"] for t in tasks) == sorted(f"cust-{i}" for i in range(CUSTOMERS))
    resent = len(receiver.requests) - len(webhooks)
    print(f"webhooks at kill: {webhooks_at_kill}, in flight then: {len(in_flight)},"
          f" resent with the same key: {resent}, two successes: {len(twice)}")  # fmt: skip
