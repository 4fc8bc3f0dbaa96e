"""The dispatcher: sends due deliveries with bounded concurrency, timeouts and back-off.

One instance sends alerts and task pushes, another sequence steps (the scheduler), so a
slow receiver of one kind never starves the other, and neither blocks the consumer. A
hanging receiver holds a slot for at most the delivery timeout, and never a sender's last
quarter of slots (`route_slots`): the alerts to a working webhook go on while a hanging CRM
times its task pushes out.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from services.actions import deliveries
from services.actions.channels import (
    Channels,
    Delivery,
    DeliveryError,
    PermanentDeliveryError,
    UnconfirmedDelivery,
)
from services.actions.db import Connection, Pool
from services.actions.metrics import ActionsMetrics
from services.actions.settings import ActionsSettings
from shared.clock import Clock
from shared.domain.playbook_requests import quiet_until
from shared.logging import get_logger
from shared.loops import run_loop
from shared.partition_scope import EVERYTHING, PartitionScope

log = get_logger(__name__)

# On stop, in-flight sends get this long; the rest are cancelled and re-sent (same key) later.
DRAIN_S = 2.0


@dataclass(frozen=True)
class DispatchPolicy:
    """How deliveries are sent: slots, timeouts, lease, attempts and back-off."""

    concurrency: int
    timeout_s: float
    lease_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float
    interval_s: float

    @classmethod
    def from_settings(cls, s: ActionsSettings) -> DispatchPolicy:
        """The policy configured by ACTIONS_* settings."""
        return cls(
            s.dispatch_concurrency, s.delivery_timeout_s, s.lease_s, s.max_attempts,
            s.backoff_base_s, s.backoff_cap_s, s.dispatch_interval_s,
        )  # fmt: skip


class Dispatcher:
    """Claims due deliveries of some kinds (FOR UPDATE SKIP LOCKED) and sends each once."""

    def __init__(
        self, name: str, pool: Pool, channels: Channels, *, kinds: Sequence[str],
        policy: DispatchPolicy, clock: Clock, metrics: ActionsMetrics,
        scope: Callable[[Connection], Awaitable[PartitionScope]] | None = None,
    ) -> None:  # fmt: skip
        """`scope`: which customers' deliveries may go now (the scheduler's: customers whose
        records are read); None: everyone's."""
        self.name, self.pool, self.channels, self.kinds = name, pool, channels, tuple(kinds)
        self.policy, self.clock, self.metrics, self.scope = policy, clock, metrics, scope
        self.in_flight: set[asyncio.Task[None]] = set()
        self.route_in_flight: Counter[deliveries.Route] = Counter()
        self.wake = asyncio.Event()
        self.rounds = metrics.dispatch_rounds.labels(name)  # exported at 0 from the start

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop`, then give in-flight sends a moment to finish."""
        try:
            await run_loop(self.name, self.step, stop, idle_s=self.policy.interval_s,
                           errors=self.metrics.loop_errors, wake=self.wake)  # fmt: skip
        finally:
            await self.drain(timeout_s=min(self.policy.timeout_s, DRAIN_S))

    @property
    def route_slots(self) -> int:
        """The most slots one route (kind, channel) may hold at once: all but a quarter."""
        return max(1, self.policy.concurrency - self.policy.concurrency // 4)

    async def step(self) -> bool:
        """Claim as many due deliveries as there are free slots, no route above its share;
        True when the round claimed all it could (more may be claimable at once)."""
        free = self.policy.concurrency - len(self.in_flight)
        if free <= 0:
            return False  # a finishing send sets `wake`
        full = sorted(r for r, n in self.route_in_flight.items() if n >= self.route_slots)
        # No route may pass its share in this round either, whichever it turns out to be.
        busiest = max((n for n in self.route_in_flight.values() if n < self.route_slots),
                      default=0)  # fmt: skip
        limit = min(free, self.route_slots - busiest)
        scope = EVERYTHING
        if self.scope is not None:
            async with self.pool.acquire() as conn:
                scope = await self.scope(conn)
        claimed = await deliveries.claim_due(
            self.pool, self.kinds, now=self.clock.now(), limit=limit,
            lease_s=self.policy.lease_s, scope=scope, skip_routes=full,
        )  # fmt: skip
        for claimed_delivery, attempt in claimed:
            # In the route it goes by: its channel may have been configured since it was planned.
            delivery = self.channels.at_send(claimed_delivery)
            route = (delivery.kind, delivery.channel)
            task = asyncio.create_task(self.deliver(delivery, attempt), name=f"send-{delivery.id}")
            self.in_flight.add(task)
            self.route_in_flight[route] += 1
            task.add_done_callback(partial(self._finished, route))
        self.rounds.inc()
        return len(claimed) == limit

    def _finished(self, route: deliveries.Route, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            # deliver() records every outcome itself; anything escaping it is a bug: said and
            # counted, not left for "Task exception was never retrieved" at exit.
            log.error("send task failed", task=task.get_name(), exc_info=exc)
            self.metrics.loop_errors.labels(self.name).inc()
        self.in_flight.discard(task)
        self.route_in_flight[route] -= 1
        if not self.route_in_flight[route]:
            del self.route_in_flight[route]
        self.wake.set()

    async def drain(self, *, timeout_s: float) -> None:
        """Wait for in-flight sends; cancel what is still running (its lease will expire)."""
        if not self.in_flight:
            return
        _, pending = await asyncio.wait(set(self.in_flight), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def deliver(self, delivery: Delivery, attempt: int) -> None:
        """Send one delivery and record the outcome (a failure to record is retried by lease);
        a step claimed inside its quiet hours is put back until they end, unsent.

        One planned for the log because its channel was not configured then goes by that
        channel if this process has it now, and its outcome records so (`Channels.at_send`).
        """
        delivery = self.channels.at_send(delivery)  # `step` did it already: the same then
        try:
            resume = quiet_until(self.clock.now(), delivery.payload.get("quiet_hours"))
        except Exception as exc:  # e.g. a zone this image's tzdata no longer has
            # Raised out of the task, it was never read: no metric, the row claimed again
            # every lease for ever, and the enrolment's later steps held behind it.
            await self._failed(delivery, attempt, f"its stored quiet hours cannot be read: "
                               f"{type(exc).__name__}: {exc}", permanent=True)  # fmt: skip
            return
        if resume is not None:
            await self._defer(delivery, attempt, resume)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            channel = self.channels.for_delivery(delivery)
            await asyncio.wait_for(channel.send(delivery), self.policy.timeout_s)
        except PermanentDeliveryError as exc:
            await self._failed(delivery, attempt, str(exc), permanent=True)
        except UnconfirmedDelivery as exc:
            await self._sent(delivery, attempt, unconfirmed=str(exc))
        except TimeoutError:
            await self._failed(delivery, attempt, f"no answer within {self.policy.timeout_s:g} s")
        except Exception as exc:  # DeliveryError, or a channel bug: retried like any failure
            detail = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            await self._failed(delivery, attempt, detail)
        else:
            await self._sent(delivery, attempt)
        finally:
            self.metrics.delivery_duration.labels(delivery.channel).observe(loop.time() - started)

    async def _sent(
        self, delivery: Delivery, attempt: int, *, unconfirmed: str | None = None
    ) -> None:
        """Record it sent; `unconfirmed` (the server's answer never came) is kept as its
        `last_error` and counted as the outcome `unconfirmed`, not `sent`."""
        now = self.clock.now()
        try:
            recorded = await deliveries.record_sent(self.pool, delivery, now=now, note=unconfirmed)
        except Exception as exc:
            log.warning("sent but not recorded; the lease will resend it with the same key",
                        **_fields(delivery), error=repr(exc))  # fmt: skip
            self._count_unrecorded(delivery)
            return
        m = self.metrics
        if not recorded.applied or recorded.cancelled:
            # Counted already, so the delivery counts once: its lease ran out and a newer
            # attempt recorded it, sent (the receiver got the same idempotency key twice) or
            # dead (the newer attempt decides); or its sequence exited while it was sent (a
            # cancelled step then, stored so with its send time).
            log.info(_superseded_event(recorded), **_fields(delivery), attempt=attempt,
                     recorded=recorded.decided)  # fmt: skip
            m.deliveries.labels(delivery.kind, delivery.channel, "superseded").inc()
            return
        if unconfirmed is None:
            log.debug("delivery sent", **_fields(delivery), attempt=attempt,
                      customer_id=delivery.customer_id)  # fmt: skip
        else:
            log.warning("delivery handed over, unconfirmed; not resent", **_fields(delivery),
                        attempt=attempt, error=unconfirmed)  # fmt: skip
        outcome = "sent" if unconfirmed is None else "unconfirmed"
        m.deliveries.labels(delivery.kind, delivery.channel, outcome).inc()
        if (fallback := delivery.payload.get("fallback")) is not None:
            m.log_fallbacks.labels(delivery.kind, fallback["channel"], fallback["reason"]).inc()
        m.delivery_attempts.labels(delivery.kind).observe(attempt)
        if delivery.due_at is not None:
            late = (now - delivery.due_at).total_seconds()
            m.delivery_lateness.labels(delivery.kind).observe(max(0.0, late))
        if recorded.sequence is not None:
            m.steps.labels(recorded.sequence, "sent").inc()

    async def _defer(self, delivery: Delivery, attempt: int, resume: datetime) -> None:
        try:
            deferred = await deliveries.defer(self.pool, delivery, due_at=resume)
        except Exception as exc:
            log.warning("quiet-hours deferral not recorded; the lease will check again",
                        **_fields(delivery), error=repr(exc))  # fmt: skip
            self._count_unrecorded(delivery)
            return
        outcome = "deferred" if deferred else "superseded"
        log.info("step deferred past quiet hours", **_fields(delivery), until=resume.isoformat(),
                 applied=deferred)  # fmt: skip
        self.metrics.deliveries.labels(delivery.kind, delivery.channel, outcome).inc()

    async def _failed(
        self, delivery: Delivery, attempt: int, error: str, *, permanent: bool = False
    ) -> None:
        give_up = permanent or attempt >= self.policy.max_attempts
        retry_in = None if give_up else self._backoff(attempt)
        try:
            recorded = await deliveries.record_failure(
                self.pool, delivery, error, retry_in_s=retry_in, now=self.clock.now()
            )
        except Exception as exc:
            log.warning("failure not recorded", **_fields(delivery), error=repr(exc))
            self._count_unrecorded(delivery)
            return
        if not recorded.applied:
            # Its lease ran out and a newer attempt (or a finished one) owns the outcome.
            log.info("outcome of a superseded attempt ignored", **_fields(delivery),
                     attempt=attempt, error=error)  # fmt: skip
            self.metrics.deliveries.labels(delivery.kind, delivery.channel, "superseded").inc()
            return
        self._count_failure(delivery, attempt, error, give_up=give_up,
                            sequence=recorded.sequence)  # fmt: skip

    def _count_unrecorded(self, delivery: Delivery) -> None:
        # The lease re-sends it; counted apart so `sent` and `retry` stay true to the database.
        self.metrics.deliveries.labels(delivery.kind, delivery.channel, "unrecorded").inc()

    def _count_failure(
        self, delivery: Delivery, attempt: int, error: str, *, give_up: bool, sequence: str | None
    ) -> None:
        m = self.metrics
        m.deliveries.labels(delivery.kind, delivery.channel, "dead" if give_up else "retry").inc()
        if not give_up:
            log.info("delivery failed; will retry", **_fields(delivery), attempt=attempt,
                     error=error)  # fmt: skip
            return
        log.warning("delivery dead-lettered", **_fields(delivery), attempts=attempt, error=error)
        m.dead_letters.labels(delivery.kind, delivery.channel).inc()
        m.delivery_attempts.labels(delivery.kind).observe(attempt)
        if sequence is not None:
            m.steps.labels(sequence, "failed").inc()

    def _backoff(self, attempt: int) -> float:
        p = self.policy
        return deliveries.backoff_s(attempt, base=p.backoff_base_s, cap=p.backoff_cap_s,
                                    jitter=random.random())  # fmt: skip


def _fields(delivery: Delivery) -> dict[str, object]:
    """What a log line says about a delivery: ids and route, never the customer or content."""
    return {
        "delivery_id": delivery.id, "kind": delivery.kind, "channel": delivery.channel,
        "tier_change_id": delivery.tier_change_id, "idempotency_key": delivery.key,
    }  # fmt: skip


def _superseded_event(recorded: deliveries.Recorded) -> str:
    if recorded.cancelled:
        return "step sent as its sequence exited; it stays cancelled"
    if recorded.decided == "sent":
        return "delivery already recorded sent"  # tests/faults/pipeline.py matches this
    return "outcome of a superseded attempt ignored"
