"""`tierstream run` and `tierstream infra`: wiring, readiness, the banner, and clean shutdown."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from types import FrameType

import httpx
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from cli.database import failure_reason, missing_server, redacted, refuse_bad_url
from cli.infra import Infra, start_infra
from cli.settings import Service, default_url, url_variable, variable
from cli.supervisor import Supervisor, service_hosts, service_ports, service_urls
from shared.embedded import die_with_parent
from shared.ports import in_use_line, ports_taken
from shared.settings import parse_api_keys


class _Stop:
    """Set by SIGINT/SIGTERM; the main loop notices and shuts everything down."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _prepare(infra: Infra, console: Console) -> tuple[dict[str, str], str | None]:
    """Environment for the children (infra addresses and an API key for all three
    services), and the key generated for this run (None: TIERSTREAM_API_KEYS was set)."""
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = infra.kafka_bootstrap_servers
    env["DATABASE_URL"] = infra.database_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    if quiet_services(env):
        env["TIERSTREAM_LOG_LEVEL"] = "WARNING"
    if env.get("TIERSTREAM_API_KEYS"):
        return env, None
    key = secrets.token_urlsafe(18)
    env["TIERSTREAM_API_KEYS"] = f"demo:{key}"
    console.print("[yellow]No TIERSTREAM_API_KEYS set: generated a key for this run.[/yellow]")
    return env, key


def quiet_services(env: Mapping[str, str]) -> bool:
    """Whether the services `run` starts log warnings and errors only: unless you chose a
    level (TIERSTREAM_LOG_LEVEL, or LOG_LEVEL, as the services read it). At INFO, hundreds
    of JSON lines (a delivery written to the log per action) scrolled the banner and its
    key away within seconds."""
    return "TIERSTREAM_LOG_LEVEL" not in env and "LOG_LEVEL" not in env


QUIET_NOTE = "logs     warnings and errors only; TIERSTREAM_LOG_LEVEL=INFO shows more"


def first_api_key(raw: str) -> str:
    """The key of TIERSTREAM_API_KEYS' first entry, read as the services read it (`key` or
    `source:key`: the source ends at the first ':', the key may hold more)."""
    return next(iter(parse_api_keys(raw)), "")


SERVICES: tuple[Service, ...] = ("ingest", "scorer", "actions")


def api_key_for(env: Mapping[str, str], service: str) -> str:
    """The first key `service` accepts: from its own `<SERVICE>_API_KEYS` when set (its
    settings read that first), else from TIERSTREAM_API_KEYS."""
    own = env.get(f"{service.upper()}_API_KEYS")
    return first_api_key(own if own is not None else env.get("TIERSTREAM_API_KEYS", ""))


def _refuse_bad_settings() -> None:
    """Each service's settings as the environment gives them, one line and exit 2 for a bad
    one, before anything starts: a bad value failed later, as a traceback of `run` itself or
    a child restarted forever."""
    from services.actions.settings import ActionsSettings
    from services.ingest.settings import IngestSettings
    from services.scorer.settings import ScorerSettings
    from shared.settings import settings_or_exit
    from shared.tracing import TracingSettings

    for settings in (IngestSettings, ScorerSettings, ActionsSettings, TracingSettings):
        settings_or_exit(settings)


OFFSET_TABLES = ("scorer.consumer_offset", "actions.consumer_offset")


async def stored_offsets(database_url: str, *, forget: bool) -> int:
    """How many consumer offsets the database holds (deleted first when `forget`)."""
    import asyncpg

    from shared.db import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        if forget:
            for table in OFFSET_TABLES:
                await conn.execute(f"DELETE FROM {table}")
        counts = [await conn.fetchval(f"SELECT count(*) FROM {table}") for table in OFFSET_TABLES]
    finally:
        await conn.close()
    return sum(counts)


def _offsets_of_another_broker(database_url: str, *, forget: bool) -> str | None:
    """One line when the database holds offsets, and the broker is the embedded one: it
    starts empty, so they are another log's. Consumers took the new log for one grown past
    them and skipped its first records: a second `run` on your DATABASE_URL lost events."""
    found = asyncio.run(stored_offsets(database_url, forget=forget))
    if not found:
        return None
    return (
        f"cannot start: the database at {redacted(database_url)} holds {found} consumer"
        " offsets of an earlier broker, and the embedded broker starts empty: the services"
        " would skip its first records. Use a new database, set KAFKA_BOOTSTRAP_SERVERS to"
        " the broker those offsets are from, or run again with --forget-offsets (its"
        " customers, changes and tasks are kept; an event sent again counts once)."
    )


def _bootstrap(
    env: dict[str, str], *, fresh_broker: bool = False, forget_offsets: bool = False
) -> str | None:
    """Migrations and topics, before any service starts: None, or one line on which of the
    database and the broker could not be used (an external one may be down or mistyped).
    `fresh_broker`: the broker is the embedded one, new and empty (the database may not be)."""
    import asyncpg
    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from shared.kafka import ensure_topics
    from shared.migrations import MigrationError, upgrade_all
    from shared.served_namespace import OtherNamespace, refuse_recorded_other
    from shared.settings import ServiceSettings
    from shared.topics import Topics

    settings = ServiceSettings(
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], database_url=env["DATABASE_URL"]
    )
    try:
        asyncio.run(upgrade_all(settings.database_url))
    except (OSError, SQLAlchemyError, MigrationError) as exc:  # what `tierstream migrate` says
        gone = missing_server(settings.database_url)
        why = f"{failure_reason(exc)}; {gone}" if gone else failure_reason(exc)
        return f"cannot migrate {redacted(settings.database_url)}: {why}"
    try:  # as each service would refuse, in one line instead of restarts without end
        asyncio.run(refuse_recorded_other(settings.database_url, settings.topic_namespace))
        if fresh_broker and (
            problem := _offsets_of_another_broker(settings.database_url, forget=forget_offsets)
        ):
            return problem
    except OtherNamespace as exc:
        return f"cannot start: {exc}"
    except (OSError, asyncpg.PostgresError) as exc:
        return f"cannot read {redacted(settings.database_url)}: {failure_reason(exc)}"
    try:
        asyncio.run(ensure_topics(settings, Topics(settings.topic_namespace).all()))
    except (OSError, KafkaError, RuntimeError) as exc:
        servers = settings.kafka_bootstrap_servers
        return f"cannot create the topics on the broker at {servers}: {failure_reason(exc)}"
    return None


def ports_in_use(env: Mapping[str, str], ports: dict[str, int]) -> str | None:
    """Which service port another program holds, if any: the readiness check would take its
    answers for the service's (the banner came, and the demo went to it) while the service
    itself failed to bind and was restarted forever."""
    hosts = service_hosts(env)
    addresses = {f"{name.upper()}_PORT": (hosts[name], port) for name, port in ports.items()}
    taken = ports_taken(addresses)
    return in_use_line(taken, "make run") if taken else None


def _wait_ready(
    supervisor: Supervisor, stop: _Stop, urls: dict[str, str], keys: dict[str, str],
    timeout: float = 90.0,
) -> dict[str, str]:  # fmt: skip
    """The services that did not answer /readyz at their URL (with their key:
    TIERSTREAM_OPEN_PROBES=false closes the probes to requests without one) before the
    deadline, each with its last answer or connection error; empty: all are ready."""
    deadline = time.monotonic() + timeout
    pending = dict.fromkeys(urls, "no answer yet")
    while pending and time.monotonic() < deadline and not stop.requested:
        supervisor.tick()
        for name in list(pending):
            auth = {"Authorization": f"Bearer {keys[name]}"} if keys.get(name) else {}
            try:
                response = httpx.get(f"{urls[name]}/readyz", headers=auth, timeout=1)
            except httpx.HTTPError as exc:
                pending[name] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code == 200:
                pending.pop(name)
            else:
                pending[name] = f"HTTP {response.status_code}"
        time.sleep(0.3)
    return pending


def not_ready_line(pending: Mapping[str, str], urls: Mapping[str, str]) -> str:
    """One line naming each service that never answered ready, where, and its last answer:
    "services did not become ready in time" left the user to guess which, and where."""
    named = "; ".join(
        f"{name} at {urls[name]}/readyz (last: {why})" for name, why in pending.items()
    )
    return f"did not become ready in time: {named}"


def banner_lines(keys: dict[str, str], urls: dict[str, str], *, generated: str | None) -> list[str]:
    """The banner's panel: short lines, which an 80-column terminal (or a pipe) does not wrap.
    Only the key `run` generated (`generated`) is shown: keys of your own
    (TIERSTREAM_API_KEYS, <SERVICE>_API_KEYS) stay off the terminal and its scrollback."""

    def shown(service: str) -> str:
        key = keys[service]
        return key if key == generated else f"yours, from {service.upper()}_API_KEYS (not shown)"

    if len(set(keys.values())) == 1:
        key_lines = [f"API key  {keys['scorer'] if generated else 'yours (not shown)'}"]
    else:  # some service has keys of its own (<SERVICE>_API_KEYS)
        key_lines = [f"{f'{name} key':<16}{shown(name)}" for name in keys]
    # The routes are on each /docs page: listed here, they wrapped mid-path at 80 columns.
    return [
        *(f"{name:<9}{urls[name]}/docs" for name in SERVICES),
        f"metrics  {metrics_urls(urls)}",
        "",
        *key_lines,
        "Ctrl-C stops everything.",
    ]


def metrics_urls(urls: Mapping[str, str]) -> str:
    """The services' /metrics, as one URL with the ports in braces when they share a host."""
    bases, ports = zip(*(url.rpartition(":")[::2] for url in urls.values()), strict=True)
    if len(set(bases)) == 1:
        return f"{bases[0]}:{{{','.join(ports)}}}/metrics"
    return "/metrics of each address above"


def try_line(keys: dict[str, str], urls: dict[str, str], *, generated: str | None) -> str:
    """A request to try, printed outside the panel: inside, it wrapped and could not be
    pasted as it was."""
    example = keys["scorer"] if keys["scorer"] == generated else "<your key>"
    url = f"{urls['scorer']}/v1/stats/tiers"
    return f"try:     curl -H 'Authorization: Bearer {example}' {url}"


def cli_exports(urls: Mapping[str, str], *, generated: str | None) -> list[str]:
    """Lines that point `simulate`, `import` and `report` in another shell at this run, when a
    service is not at its default address: they read TIERSTREAM_*_URL, whose defaults are the
    default ports (someone else's `run`, maybe). With the key, when `run` generated it."""
    if all(urls[service] == default_url(service) for service in SERVICES):
        return []
    lines = [f"for {CLI_COMMANDS} in another shell:"]
    lines += [export_line(url_variable(service), urls[service]) for service in SERVICES]
    if generated:
        lines.append(export_line(variable("api_key"), generated))
    return lines


CLI_COMMANDS = "`tierstream simulate`, `import` and `report`"


def print_banner(
    console: Console,
    infra: Infra,
    lines: list[str],
    *,
    after: Sequence[str] = (),
    exports: Sequence[str] = (),
) -> None:
    """The panel, then, outside it and unwrapped so that they can be copied (and parsed),
    the `after` lines, the addresses of the broker and the database (without its
    password), and the `exports` lines."""
    console.print(Panel("\n".join(lines), title="Tierstream is running", expand=False))
    for line in after:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    embedded_kafka = " (embedded)" if infra.embedded_kafka else ""
    embedded_pg = " (embedded)" if infra.embedded_postgres else ""
    console.print(f"kafka    {infra.kafka_bootstrap_servers}{embedded_kafka}", soft_wrap=True)
    # The embedded server's password was made for this run, like a generated key: shown.
    url = infra.database_url if infra.embedded_postgres else redacted(infra.database_url)
    console.print(f"postgres {url}{embedded_pg}", soft_wrap=True, highlight=False)
    if infra.embedded_postgres:  # yours is in your environment already, and stays off screen
        # Not exported to your shell, the database commands failed on a default address.
        console.print(f"for {DATABASE_COMMANDS} in another shell:", highlight=False)
        line = export_line("DATABASE_URL", infra.database_url)
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    for line in exports:
        console.print(line, soft_wrap=True, highlight=False, markup=False)


DATABASE_COMMANDS = "`tierstream migrate` and `tierstream rules diff`"


def _start_demo(env: dict[str, str], key: str, ingest_url: str) -> subprocess.Popen[bytes]:
    # This run's ingest, whatever TIERSTREAM_INGEST_URL the shell holds (from `import` or
    # `simulate` against another one): the demo's events must reach the services just started.
    demo_env = {**env, "TIERSTREAM_API_KEY": key, "TIERSTREAM_INGEST_URL": ingest_url}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.demo"], env=demo_env, preexec_fn=die_with_parent
    )


def _kill_if_running(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()


def run_system(console: Console, *, demo: bool = True, forget_offsets: bool = False) -> int:
    """Run everything until SIGINT/SIGTERM; returns the exit code. `forget_offsets`: delete
    the consumer offsets an earlier broker left in the database, when the broker is the
    embedded one."""
    stop = _Stop()
    if database_url := os.environ.get("DATABASE_URL"):
        refuse_bad_url(database_url, console)  # before starting anything
        if gone := missing_server(database_url):  # an ended run's, exported in this shell
            console.print(f"[red]cannot start: {escape(gone)}[/red]", soft_wrap=True)
            return 1
    _refuse_bad_settings()
    ports, urls = service_ports(os.environ), service_urls(os.environ)
    # Before starting anything: found after the broker, Postgres, migrations and topics,
    # a second `run` took seconds to say so.
    if taken := ports_in_use(os.environ, ports):
        console.print(f"[red]{escape(taken)}[/red]", soft_wrap=True)
        return 1
    with ExitStack() as stack:
        console.print("starting infrastructure...")
        infra = start_infra(stack)
        env, generated = _prepare(infra, console)
        fresh = infra.embedded_kafka and not infra.embedded_postgres
        if problem := _bootstrap(env, fresh_broker=fresh, forget_offsets=forget_offsets):
            console.print(f"[red]{escape(problem)}[/red]", soft_wrap=True)
            return 1
        supervisor = Supervisor(env, log=console.print)
        stack.callback(supervisor.stop)  # LIFO: services stop before the infrastructure
        supervisor.start()
        keys: dict[str, str] = {service: api_key_for(env, service) for service in SERVICES}
        if pending := _wait_ready(supervisor, stop, urls, keys):
            if stop.requested:
                return 0
            console.print(f"[red]{escape(not_ready_line(pending, urls))}[/red]", soft_wrap=True)
            return 1
        after = [try_line(keys, urls, generated=generated)]
        if quiet_services(os.environ):
            after.append(QUIET_NOTE)
        lines = banner_lines(keys, urls, generated=generated)
        exports = cli_exports(urls, generated=generated)
        print_banner(console, infra, lines, after=after, exports=exports)
        demo_proc = _start_demo(env, keys["ingest"], urls["ingest"]) if demo else None
        if demo_proc is not None:
            stack.callback(_kill_if_running, demo_proc)
        while not stop.requested:
            supervisor.tick()
            if demo_proc is not None and demo_proc.poll() is not None:
                demo_proc = None  # reaped: it stayed a zombie (`<defunct>`) all session
            time.sleep(0.3)
        console.print("stopping...")
    return 0


def export_line(name: str, value: str) -> str:
    """A shell line that sets `name` for the commands started from that shell afterwards."""
    return f"export {name}={shlex.quote(value)}"


def run_infra(console: Console) -> None:
    """Start embedded infrastructure only, print how to reach it, block until Ctrl-C."""
    stop = _Stop()
    with ExitStack() as stack:
        infra = start_infra(stack, env={})
        # Outside any panel and unwrapped, so the lines can be copied (the data directory
        # in DATABASE_URL is long: a panel wrapped it inside its border).
        # `export`: pasted without it, the variables stayed the shell's own, and the services
        # and commands started from it did not see them.
        console.print("embedded infrastructure (Ctrl-C stops both):")
        for name, value in (("KAFKA_BOOTSTRAP_SERVERS", infra.kafka_bootstrap_servers),
                            ("DATABASE_URL", infra.database_url)):  # fmt: skip
            console.print(export_line(name, value), soft_wrap=True, highlight=False, markup=False)
        while not stop.requested:
            time.sleep(0.3)
