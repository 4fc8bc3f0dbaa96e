"""A whole pipeline under test (scorer + actions subprocesses, a webhook receiver) and its checks.

Scenarios 1-3 share it: they differ in what they break while the stream flows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from services.scorer.settings import ScorerSettings
from shared.domain.state import Event
from shared.kafka import ensure_topics
from shared.topics import Topics
from tests.faults.harness import Harness, ServiceProcess, pipeline_env
from tests.faults.verify import (
    actions_duplicates,
    actions_offsets,
    changes_of,
    compare_published,
    consumed_changes,
    eventually,
    expected_alerts,
    read_topic,
    rows,
    scalar,
    scorer_caught_up,
    scorer_offsets,
    state_mismatches,
    stored_alerts,
)
from tests.faults.workload import NOW, Stream
from tests.integration.actions.support import SECRET, WebhookReceiver

# What the actions service logs (with the key) when one idempotency key may reach the receiver
# twice without a kill: a 200 whose outcome it could not write (Postgres gone), so the lease
# sends it again; or a second 200 after the first attempt's lease ran out.
RESEND_LOGS = (
    "sent but not recorded; the lease will resend it with the same key",
    "delivery already recorded sent",
)


@dataclass
class Outcome:
    """What one run measured; printed as one JSON line for the suite's report."""

    scenario: str
    events: int = 0
    records: int = 0
    customers: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    changes: int = 0
    topic_records: int = 0
    missing_on_topic: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    webhook_resends: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def print(self) -> None:
        print(f"\nFAULTS-OUTCOME {json.dumps(asdict(self), sort_keys=True)}")


@dataclass
class Pipeline:
    """Services of one test on a private broker and a migrated database."""

    harness: Harness
    bootstrap: str
    database_url: str
    namespace: str
    receiver: WebhookReceiver
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = pipeline_env(self.bootstrap, self.database_url, self.namespace, now=NOW)
        webhook = {
            "ACTIONS_WEBHOOK_URL": f"{self.receiver.url}/alerts",
            "ACTIONS_WEBHOOK_SECRET": SECRET,
        }
        return {**env, **webhook, **self.extra_env}

    @property
    def topics(self) -> Topics:
        return Topics(self.namespace)

    async def create_topics(self) -> None:
        await ensure_topics(ScorerSettings.model_validate(self.env), self.topics.all())

    async def start(self, service: str) -> ServiceProcess:
        process = self.harness.spawn(service, self.env)
        await process.wait_serving()
        return process

    def stream(self, events: list[Event], *, chunk: int, pause_s: float) -> Stream:
        return Stream(self.bootstrap, self.namespace, events, chunk=chunk, pause_s=pause_s)


def new_receiver() -> WebhookReceiver:
    return WebhookReceiver(SECRET.encode())


async def wait_scorer_done(p: Pipeline, records: int, *, within: float = 120.0) -> None:
    await eventually(
        lambda: scorer_caught_up(p.database_url, records),
        within=within,
        what=f"scorer committed {records} records and published every change",
    )


async def wait_actions_done(p: Pipeline, topic_records: int, purchases: int) -> None:
    """Actions consumed both topics to their ends and sent every alert that is due."""
    tier, buys = p.topics.tier_changed, p.topics.purchases

    async def consumed() -> bool:
        return (
            await actions_offsets(p.database_url, tier) >= topic_records
            and await actions_offsets(p.database_url, buys) >= purchases
        )

    pending = "SELECT count(*) FROM actions.delivery WHERE kind = 'alert' AND status = 'pending'"

    async def dispatched() -> bool:
        return await scalar(p.database_url, pending) == 0

    await eventually(consumed, within=120, what="actions consumed the tier changes and purchases")
    await eventually(dispatched, within=60, what="every alert delivery left pending")


async def check_pipeline(p: Pipeline, events: list[Event], outcome: Outcome) -> list[Any]:
    """Compare the scorer with the reference, the topic with the outbox, actions with the
    changes; fill `outcome`. Returns the tier-changed records read from the topic."""
    distinct = list({e.event_id: e for e in events}.values())
    outcome.events, outcome.customers = len(distinct), len({e.customer_id for e in distinct})
    mismatches = await state_mismatches(p.database_url, distinct, now=NOW)
    outcome.mismatches = len(mismatches)
    changes = await scalar(p.database_url, "SELECT count(*) FROM scorer.tier_change")
    records = await read_topic(p.bootstrap, p.topics.tier_changed, at_least=changes, within=60)
    published = await compare_published(p.database_url, records)
    outcome.changes, outcome.topic_records = published.changes, published.records
    outcome.missing_on_topic = published.missing + published.unknown
    assert mismatches == [], f"{len(mismatches)} customers differ, e.g. {mismatches[:5]}"
    assert published.missing == 0 and published.unknown == 0, published
    assert await scalar(p.database_url, "SELECT count(*) FROM scorer.inbox") == len(distinct)
    return records


async def check_actions(p: Pipeline, records: list[Any], outcome: Outcome) -> None:
    """Every change consumed once; no effect twice; alerts exactly as planned; a success for
    every webhook key at the receiver, and only one unless the actions service was killed
    or logged that it would send that key again."""
    changes = changes_of(records)
    assert await consumed_changes(p.database_url) == set(changes)
    outcome.duplicates = await actions_duplicates(p.database_url)
    stored, expected = await stored_alerts(p.database_url), expected_alerts(changes.values())
    outcome.alerts = sum(stored.values())
    assert outcome.duplicates == dict.fromkeys(outcome.duplicates, 0), outcome.duplicates
    assert stored == expected, (stored - expected, expected - stored)
    sql = (
        "SELECT idempotency_key AS key, status FROM actions.delivery WHERE kind = 'alert'"
        " AND channel = 'webhook'"
    )
    webhooks = await rows(p.database_url, sql)
    assert {r["status"] for r in webhooks} <= {"sent"}, Counter(r["status"] for r in webhooks)
    ok = Counter(r.key for r in p.receiver.requests if r.status == 200)
    assert set(ok) == {r["key"] for r in webhooks}
    assert all(r.signature_ok for r in p.receiver.requests)
    outcome.webhook_resends = sum(ok.values()) - len(ok)
    if p.harness.kills.get("actions", 0) == 0:
        resent = {key: n for key, n in ok.items() if n > 1}
        unexplained = resent.keys() - logged_resends(p)
        assert not unexplained, (
            "webhook keys that got more than one 200 with no kill and no resend logged",
            {key: resent[key] for key in unexplained},
        )


def logged_resends(p: Pipeline) -> set[str]:
    """Idempotency keys the actions processes logged they might send again (RESEND_LOGS)."""
    keys: set[str] = set()
    for process in p.harness.processes:
        if process.service != "actions" or not process.log_path.exists():
            continue
        for line in process.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") in RESEND_LOGS:
                keys.add(str(entry.get("idempotency_key")))
    return keys


async def kill_when(
    process: ServiceProcess,
    ready: Callable[[], bool],
    progress: Callable[[], Awaitable[int]],
    log: list[dict[str, Any]],
    describe: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """SIGKILL `process` once `ready()` holds and it has made progress since it started,
    then restart it at once (the supervisor's job)."""
    baseline = await progress()
    await eventually(lambda: holds(ready), within=600, every=0.05, what="the moment to kill")
    await eventually(
        lambda: _moved(progress, baseline),
        within=90,
        every=0.05,
        what=f"{process.name} making progress before its kill",
    )
    log.append({"process": process.name, **await describe()})
    process.restart_after_kill()


async def holds(condition: Callable[[], bool]) -> bool:
    """`condition()` as an awaitable probe for `eventually`."""
    return condition()


async def _moved(progress: Callable[[], Awaitable[int]], baseline: int) -> bool:
    return await progress() > baseline


def scorer_progress(p: Pipeline) -> Callable[[], Awaitable[int]]:
    return lambda: scorer_offsets(p.database_url)


def actions_progress(p: Pipeline) -> Callable[[], Awaitable[int]]:
    return lambda: scalar(p.database_url, "SELECT count(*) FROM actions.inbox")
