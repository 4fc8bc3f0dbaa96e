"""Run the actions service: consumer, dispatcher, sequence scheduler, gauges and the task API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.actions import queries
from services.actions.app import create_app
from services.actions.channels import Channels, SmtpChannel, SmtpConfig, WebhookChannel
from services.actions.consumer import ChangeConsumer
from services.actions.db import Pool, create_pool, database_ready, migrate
from services.actions.dispatcher import Dispatcher, DispatchPolicy
from services.actions.effects import ChannelConfig
from services.actions.loops import run_loop
from services.actions.metrics import ActionsMetrics, actions_metrics, prime_metrics
from services.actions.settings import ActionsSettings
from shared.clock import Clock, clock_for
from shared.domain.playbooks import Playbooks, PlaybooksError, load_playbooks
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.logging import get_logger
from shared.metrics import new_registry
from shared.service import Loop, serve
from shared.topics import Topics

log = get_logger(__name__)


def load_playbooks_or_exit(settings: ActionsSettings) -> Playbooks:
    """The validated playbooks; an invalid file stops the service with the precise error."""
    try:
        return load_playbooks(settings.playbooks_file)
    except PlaybooksError as exc:
        raise SystemExit(f"actions: invalid playbooks file: {exc}") from exc


def channel_config(settings: ActionsSettings) -> ChannelConfig:
    """Which channels this process can use (the rest fall back to the log)."""
    return ChannelConfig(
        webhook=settings.webhook_url is not None, email=settings.smtp_host is not None,
        crm=settings.crm_webhook_url is not None, alert_email_to=settings.alert_email_to,
    )  # fmt: skip


def build_channels(settings: ActionsSettings, client: httpx.AsyncClient) -> Channels:
    """The configured channels: signed webhooks, SMTP, and the log."""
    secret = settings.webhook_secret.get_secret_value().encode()
    webhook, crm, email = None, None, None
    if settings.webhook_url is not None:  # the same test as `channel_config` (empty is None)
        webhook = WebhookChannel(client, settings.webhook_url, secret)
    if settings.crm_webhook_url is not None:
        crm = WebhookChannel(client, settings.crm_webhook_url, secret)
    if settings.smtp_host is not None:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        email = SmtpChannel(SmtpConfig(
            settings.smtp_host, settings.smtp_port, settings.smtp_from, settings.smtp_user,
            password, settings.smtp_starttls, settings.delivery_timeout_s,
        ))  # fmt: skip
    return Channels(webhook=webhook, crm=crm, email=email)


async def run(
    settings: ActionsSettings, *, stop: asyncio.Event | None = None, clock: Clock | None = None
) -> None:
    """Serve the actions service until `stop` is set (or SIGTERM / SIGINT when none is given)."""
    settings.require_keys()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook is noise
    playbooks = load_playbooks_or_exit(settings)
    clock = clock or clock_for(settings.now)
    await ensure_topics(settings, Topics(settings.topic_namespace).all())
    if settings.migrate:
        await migrate(settings.database_url)
    async with _resources(settings) as (pool, client):
        registry = new_registry()
        metrics = actions_metrics(registry)
        loops = _loops(settings, pool, build_channels(settings, client), playbooks, clock, metrics)
        _prime(metrics, settings, playbooks, loops)
        app = _app(settings, pool, clock, registry)
        log.info("actions listening", host=settings.host, port=settings.port,
                 playbooks=playbooks.version)  # fmt: skip
        await serve(app, host=settings.host, port=settings.port, loops=loops, stop=stop,
                    install_signals=stop is None)  # fmt: skip


def _prime(
    metrics: ActionsMetrics, settings: ActionsSettings, playbooks: Playbooks, loops: list[Loop]
) -> None:
    """Known label combinations start at 0 (dead letters, outcomes, loop errors, ...)."""
    topics = Topics(settings.topic_namespace)
    prime_metrics(
        metrics, playbooks=playbooks, loops=[getattr(loop, "__name__", "loop") for loop in loops],
        dlq_topics=[Topics.dlq(topics.tier_changed), Topics.dlq(topics.purchases)],
    )  # fmt: skip


def _loops(
    settings: ActionsSettings, pool: Pool, channels: Channels, playbooks: Playbooks,
    clock: Clock, metrics: ActionsMetrics,
) -> list[Loop]:  # fmt: skip
    """Consumer, dispatcher, scheduler and gauges; a committed batch wakes the senders."""
    senders = _dispatchers(settings, pool, channels, clock, metrics)

    def wake_senders() -> None:
        for sender in senders:
            sender.wake.set()

    return [
        _consume(settings, pool, playbooks, clock, metrics, on_effects=wake_senders),
        *[_named(s.name, s.run) for s in senders],
        _loop("gauges", _gauge_step(pool, clock, metrics), settings.gauge_interval_s, metrics),
    ]


@asynccontextmanager
async def _resources(settings: ActionsSettings) -> AsyncIterator[tuple[Pool, httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        pool = await create_pool(
            settings.database_url, size=settings.db_pool_size, application_name="tierstream-actions"
        )
        stack.push_async_callback(pool.close)
        slots = settings.dispatch_concurrency * 2
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.delivery_timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
        )  # fmt: skip
        stack.push_async_callback(client.aclose)
        yield pool, client


def _consume(
    settings: ActionsSettings, pool: Pool, playbooks: Playbooks, clock: Clock,
    metrics: ActionsMetrics, *, on_effects: Callable[[], None],
) -> Loop:  # fmt: skip
    """The consumer loop (it starts and stops its own Kafka clients)."""
    topics = Topics(settings.topic_namespace)
    channels = channel_config(settings)

    async def consume(stop: asyncio.Event) -> None:
        group = settings.consumer_group
        producer = make_producer(settings)
        consumer = make_consumer(settings, group, max_poll_records=settings.batch_max_records)
        changes = ChangeConsumer(
            consumer, producer, pool, group_id=group, topics=topics, playbooks=playbooks,
            channels=channels, clock=clock, metrics=metrics,
            max_records=settings.batch_max_records, poll_timeout_ms=settings.poll_timeout_ms,
            on_effects=on_effects,
        )  # fmt: skip
        consumer.subscribe([topics.tier_changed, topics.purchases], listener=changes.listener())
        try:
            await producer.start()
            await consumer.start()
            await run_loop("consumer", changes.step, stop, idle_s=0.0, errors=metrics.loop_errors)
        finally:
            await consumer.stop()
            await producer.stop()

    consume.__name__ = "consumer"
    return consume


def _dispatchers(
    settings: ActionsSettings, pool: Pool, channels: Channels, clock: Clock, metrics: ActionsMetrics
) -> list[Dispatcher]:
    """Alerts and task pushes in one sender, sequence steps (the scheduler) in another."""
    policy = DispatchPolicy.from_settings(settings)
    return [
        Dispatcher(name, pool, channels, kinds=kinds, policy=policy, clock=clock, metrics=metrics)
        for name, kinds in (("dispatcher", ("alert", "task")), ("scheduler", ("step",)))
    ]


def _app(
    settings: ActionsSettings, pool: Pool, clock: Clock, registry: CollectorRegistry
) -> FastAPI:
    async def ready() -> dict[str, bool]:
        return {"database": await database_ready(pool)}

    return create_app(settings, pool=pool, clock=clock, registry=registry, ready=ready)


def _named(name: str, loop: Loop) -> Loop:
    async def run_named(stop: asyncio.Event) -> None:
        await loop(stop)

    run_named.__name__ = name
    return run_named


def _loop(
    name: str, step: Callable[[], Awaitable[bool]], idle_s: float, metrics: ActionsMetrics
) -> Loop:
    async def loop(stop: asyncio.Event) -> None:
        await run_loop(name, step, stop, idle_s=idle_s, errors=metrics.loop_errors)

    loop.__name__ = name
    return loop


def _gauge_step(pool: Pool, clock: Clock, metrics: ActionsMetrics) -> Callable[[], Awaitable[bool]]:
    """Refresh tasks open/overdue per queue and enrolments by sequence and status."""

    seen: set[tuple[str, str]] = set()

    async def step() -> bool:
        for queue, open_, overdue in await queries.task_gauges(pool, now=clock.now()):
            metrics.tasks_open.labels(queue).set(open_)
            metrics.tasks_overdue.labels(queue).set(overdue)
        current = {(s, st): n for s, st, n in await queries.enrolment_gauges(pool)}
        for labels in seen - current.keys():  # e.g. no active enrolment left: 0, not stale
            metrics.enrolments.labels(*labels).set(0)
        for labels, n in current.items():
            metrics.enrolments.labels(*labels).set(n)
        seen.update(current)
        return False

    return step
