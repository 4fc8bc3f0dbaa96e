"""Run the actions service: the task API and the loops of `workers` (consumer, senders, ...)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

from services.actions import store
from services.actions.app import create_app
from services.actions.channels import Channels, SmtpChannel, SmtpConfig, WebhookChannel
from services.actions.db import Pool, create_api_pool, create_pool, migrate
from services.actions.effects import (
    ChannelConfig,
    alerts_without_recipient,
    unconfigured_channels,
)
from services.actions.metrics import actions_metrics
from services.actions.settings import ActionsSettings
from services.actions.workers import Parts, build_loops
from shared.clock import Clock, clock_for
from shared.domain.playbooks import Playbooks, PlaybooksError, check_against_rules, load_playbooks
from shared.domain.rules import RulesError, load_rules
from shared.kafka import ensure_topics
from shared.logging import get_logger
from shared.metrics import new_registry
from shared.migrations import MigrationError, require_migrated
from shared.readiness import BrokerCheck, readiness
from shared.served_namespace import refuse_recorded_other, require_namespace
from shared.service import serve
from shared.topics import Topics
from shared.tracing import Tracer, make_tracer

log = get_logger(__name__)


def load_playbooks_or_exit(settings: ActionsSettings) -> Playbooks:
    """The validated playbooks; an invalid file, or a class the rules file does not declare,
    stops the service with the precise error."""
    try:
        rules = load_rules(settings.rules_file)
    except RulesError as exc:
        raise SystemExit(f"actions: invalid rules file: {exc}") from exc
    try:
        playbooks = load_playbooks(settings.playbooks_file)
    except PlaybooksError as exc:
        raise SystemExit(f"actions: invalid playbooks file: {exc}") from exc
    try:
        check_against_rules(playbooks, rules)
    except PlaybooksError as exc:
        # A playbook waiting for a class no change carries would never fire, and say nothing.
        raise SystemExit(
            f"actions: cannot start: the playbooks do not match the rules: {exc}"
        ) from exc
    return playbooks


def channel_config(settings: ActionsSettings) -> ChannelConfig:
    """Which channels this process can use (the rest fall back to the log)."""
    return ChannelConfig(
        webhook=settings.webhook_url is not None, email=settings.smtp_host is not None,
        crm=settings.crm_webhook_url is not None, alert_email_to=settings.alert_email_to,
    )  # fmt: skip


def build_channels(settings: ActionsSettings, client: httpx.AsyncClient, clock: Clock) -> Channels:
    """The configured channels: signed webhooks, SMTP (its `Date:` from `clock`), and the log."""
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
            settings.smtp_reply_to, settings.smtp_list_unsubscribe,
        ), clock)  # fmt: skip
    return Channels(webhook=webhook, crm=crm, email=email)


async def run(
    settings: ActionsSettings, *, stop: asyncio.Event | None = None, clock: Clock | None = None,
    tracer: Tracer | None = None,
) -> None:  # fmt: skip
    """Serve the actions service until `stop` is set (or SIGTERM / SIGINT when none is given)."""
    settings.require_keys()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook is noise
    playbooks = load_playbooks_or_exit(settings)
    clock = clock or clock_for(settings.now)
    await ensure_topics(settings, Topics(settings.topic_namespace).all())
    if settings.migrate:
        namespace = settings.topic_namespace  # not after: it would migrate another's schema
        await refuse_recorded_other(settings.database_url, namespace, services=("actions",))
        try:
            await migrate(settings.database_url)
        except MigrationError as exc:
            raise SystemExit(f"actions: cannot migrate: {exc}") from exc
    tracing = tracer or make_tracer("actions")
    try:
        async with _resources(settings) as (pool, api_pool, client):
            await require_migrated(pool, "actions")  # passes after the migration above
            await require_namespace(pool, "actions", settings.topic_namespace)
            await _serve(settings, (pool, api_pool), client, playbooks, clock, tracing, stop)
    finally:
        if tracer is None:  # ours to flush
            tracing.shutdown()


async def _serve(
    settings: ActionsSettings, pools: tuple[Pool, Pool], client: httpx.AsyncClient,
    playbooks: Playbooks, clock: Clock, tracer: Tracer, stop: asyncio.Event | None,
) -> None:  # fmt: skip
    pool, api_pool = pools  # the work's, the HTTP API's
    registry = new_registry()
    broker = BrokerCheck(within=settings.ready_timeout_s)
    parts = Parts(settings, pool, playbooks, clock, actions_metrics(registry), broker, tracer)
    configured = channel_config(settings)
    if missing := unconfigured_channels(playbooks, configured):
        log.warning("playbooks send by channels this process has no settings for: their"
                    " messages are written to the log (tierstream_actions_log_fallbacks_total)",
                    channels=missing)  # fmt: skip
    if unaddressed := alerts_without_recipient(playbooks, configured):
        log.warning("e-mail alerts with no `to` and ACTIONS_ALERT_EMAIL_TO unset: they are"
                    " written to the log (tierstream_actions_log_fallbacks_total)",
                    playbooks=unaddressed)  # fmt: skip
    await _end_removed_sequences(parts)
    loops = build_loops(parts, build_channels(settings, client, clock), configured)
    ready = readiness(api_pool, broker, within=settings.ready_timeout_s)
    app = create_app(settings, pool=api_pool, clock=clock, registry=registry, ready=ready)
    log.info("actions listening", host=settings.host, port=settings.port,
             playbooks=playbooks.version, tracing=tracer.enabled)  # fmt: skip
    await serve(app, host=settings.host, port=settings.port, loops=loops, stop=stop,
                install_signals=stop is None)  # fmt: skip


async def _end_removed_sequences(parts: Parts) -> None:
    """Enrolments in sequences the playbooks no longer define end before anything runs."""
    async with parts.pool.acquire() as conn, conn.transaction():
        ended = await store.end_removed_sequences(
            conn, sorted(parts.playbooks.sequences), now=parts.clock.now()
        )
    for sequence, (enrolments, steps) in sorted(ended.items()):
        parts.metrics.steps.labels(sequence, "cancelled").inc(steps)
        log.warning("sequence no longer in the playbooks: its active enrolments exited",
                    sequence=sequence, enrolments=enrolments, cancelled_steps=steps)  # fmt: skip


@asynccontextmanager
async def _resources(
    settings: ActionsSettings,
) -> AsyncIterator[tuple[Pool, Pool, httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        pool = await create_pool(
            settings.database_url, size=settings.db_pool_size, application_name="tierstream-actions"
        )
        stack.push_async_callback(pool.close)
        api_pool = await create_api_pool(
            settings.database_url, size=settings.api_db_pool_size, within=settings.api_db_timeout_s
        )
        stack.push_async_callback(api_pool.close)
        slots = settings.dispatch_concurrency * 2
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.delivery_timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
        )  # fmt: skip
        stack.push_async_callback(client.aclose)
        yield pool, api_pool, client
