"""`tierstream run`'s banner: the key the services accept, never a key of yours."""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

import cli.run
from cli.database import redacted
from cli.infra import Infra
from cli.main import app
from cli.run import (
    api_key_for,
    banner_lines,
    first_api_key,
    ports_in_use,
    print_banner,
    try_line,
)
from shared.embedded import free_port
from shared.ports import other_ports


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("demo:s3cret", "s3cret"),
        ("plain-key", "plain-key"),
        ("demo:abc:def", "abc:def"),  # the source ends at the first ':', the key holds the rest
        (" , shop:k1, other:k2", "k1"),
        (",", ""),
    ],
)
def test_the_banner_key_is_the_first_key_as_the_services_read_it(raw: str, key: str) -> None:
    assert first_api_key(raw) == key


@pytest.mark.parametrize(
    ("env", "ingest", "scorer"),
    [
        ({"TIERSTREAM_API_KEYS": "demo:k"}, "k", "k"),
        # Before, the demo sent the shared key, which an ingest with keys of its own refused.
        ({"TIERSTREAM_API_KEYS": "demo:k", "INGEST_API_KEYS": "shop:i1,shop:i2"}, "i1", "k"),
        ({"TIERSTREAM_API_KEYS": "demo:k", "INGEST_API_KEYS": ""}, "", "k"),  # as ingest reads
    ],
)
def test_each_service_is_given_a_key_it_accepts(
    env: dict[str, str], ingest: str, scorer: str
) -> None:
    assert (api_key_for(env, "ingest"), api_key_for(env, "scorer")) == (ingest, scorer)


PORTS = {"ingest": 8080, "scorer": 8081, "actions": 8082}
URLS = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}


def test_the_banner_shows_a_generated_key_and_never_one_of_yours() -> None:
    # It printed TIERSTREAM_API_KEYS' key twice (the key line and the curl example) into the
    # terminal's scrollback; only a key made for this run is the user's to see there.
    def banner(keys: dict[str, str], generated: str | None) -> str:
        lines = banner_lines(keys, URLS, generated=generated)
        return "\n".join([*lines, try_line(keys, URLS, generated=generated)])

    made = "generated-for-this-run"
    assert banner(dict.fromkeys(PORTS, made), made).count(made) == 2
    yours = dict.fromkeys(PORTS, "MY-PRODUCTION-KEY")
    assert "MY-PRODUCTION-KEY" not in banner(yours, None)
    mixed = {**dict.fromkeys(PORTS, made), "ingest": "MY-INGEST-KEY"}
    lines = banner(mixed, made)
    assert "MY-INGEST-KEY" not in lines and "INGEST_API_KEYS (not shown)" in lines
    assert made in lines


def test_the_banner_prints_the_database_without_its_password() -> None:
    console = Console(record=True, width=200)
    infra = Infra("127.0.0.1:9092", "postgresql://app:PASSW0RD@db.example:5432/tierstream",
                  embedded_kafka=False, embedded_postgres=False)  # fmt: skip
    print_banner(console, infra, ["ingest ..."])
    text = console.export_text()
    assert "PASSW0RD" not in text and "postgresql://app:***@db.example:5432/tierstream" in text


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KAFKA_BOOTSTRAP_SERVERS", "foo:bar"), ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:99999"),
     ("TIERSTREAM_PARTITIONS", "abc"), ("INGEST_PORT", "abc"), ("TIERSTREAM_TRACING", "jaeger")],
)  # fmt: skip
def test_run_refuses_a_bad_setting_in_one_line_before_starting_anything(
    variable: str, value: str
) -> None:
    # Each was a traceback of `run` itself (int(), the socket's port range, pydantic) or,
    # for INGEST_PORT and TIERSTREAM_TRACING, came after the services had been started.
    result = CliRunner().invoke(app, ["run", "--no-demo"], env={variable: value})
    assert result.exit_code == 2, result.output
    assert f"invalid configuration: {variable}: " in result.output
    assert "Traceback" not in result.output and "starting infrastructure" not in result.output


def test_a_service_port_another_program_listens_on_is_named() -> None:
    # The readiness check took the other program's answers for the service's: the banner
    # came, and the demo went to it, while ingest failed to bind and restarted forever.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        ports = {"ingest": taken, "scorer": free_port(), "actions": free_port()}
        other = taken + 10000 if taken <= 55535 else taken - 10000
        assert ports_in_use({}, ports) == (
            f"in use by another program: INGEST_PORT={taken} (another `tierstream run`? stop"
            f" it, or set another port: INGEST_PORT={other} make run)"
        )
    assert ports_in_use({}, ports) is None


def test_the_taken_port_message_shows_how_to_set_other_ports() -> None:
    # "set another port" did not say how: only docs/CONFIGURATION.md named INGEST_PORT.
    assert other_ports({"INGEST_PORT": 8080, "ACTIONS_PORT": 60000}, "make run") == (
        "INGEST_PORT=18080 ACTIONS_PORT=50000 make run"
    )


def test_the_embedded_database_is_printed_as_given_and_a_password_hidden_in_place() -> None:
    # Rendered by SQLAlchemy, the socket directory came out escaped (host=%2Ftmp%2F...).
    url = "postgresql://postgres:made-for-this-run@/postgres?host=/tmp/tierstream-pg-x/pgdata"
    console = Console(record=True, width=300)
    print_banner(console, Infra("k:9092", url, embedded_kafka=True, embedded_postgres=True), [])
    assert url in console.export_text()
    assert redacted(url) == "postgresql://postgres:***@/postgres?host=/tmp/tierstream-pg-x/pgdata"


def test_infra_prints_lines_that_reach_the_commands_started_after_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Printed as `NAME=value`, a pasted line set a variable of the shell only: the services
    # and commands started from it afterwards did not see it.
    url = "postgresql://postgres:made-here@/postgres?host=/tmp/tierstream-pg-x/pgdata"
    monkeypatch.setattr(cli.run, "start_infra", lambda stack, env: Infra("127.0.0.1:9092", url,
                        embedded_kafka=True, embedded_postgres=True))  # fmt: skip
    monkeypatch.setattr(cli.run, "_Stop", lambda: SimpleNamespace(requested=True))
    console = Console(record=True, width=80)
    cli.run.run_infra(console)
    lines = [line for line in console.export_text().splitlines() if "=" in line]
    script = "\n".join([*lines, "env"])
    child_env = subprocess.run(["sh", "-c", script], env={}, capture_output=True, text=True,
                               check=True).stdout.splitlines()  # fmt: skip
    assert f"DATABASE_URL={url}" in child_env
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092" in child_env


EMBEDDED_URL = "postgresql://postgres:made-for-this-run@/postgres?host=/tmp/tierstream-pg-x/pgdata"


@dataclass
class OfflineRun:
    """`run_system` with its infrastructure, bootstrap and services replaced by stand-ins:
    what it printed, what it gave the services, and when it started what."""

    monkeypatch: pytest.MonkeyPatch
    ports: dict[str, int]
    steps: list[str] = field(default_factory=list)
    child_env: dict[str, str] = field(default_factory=dict)
    demo: subprocess.Popen[bytes] | None = None
    output: str = ""
    timed_out: bool = False  # stopped at the deadline, not when `stop_when` said so
    polled: dict[str, str] = field(default_factory=dict)  # the URLs the readiness check got
    not_ready: dict[str, str] = field(default_factory=dict)  # what the readiness check finds

    def wait_ready(self, supervisor: object, stop: object, urls: dict[str, str],
                   keys: dict[str, str]) -> dict[str, str]:  # fmt: skip
        self.polled = dict(urls)
        return self.not_ready

    def __call__(
        self, *, stop_when: Callable[[OfflineRun], bool] = lambda run: True, demo: bool = False,
        infra: Infra | None = None, deadline_s: float = 10.0,
    ) -> int:  # fmt: skip
        run = self
        infra = infra or Infra("127.0.0.1:9092", EMBEDDED_URL, embedded_kafka=True,
                               embedded_postgres=True)  # fmt: skip

        def start_infra(stack: ExitStack) -> Infra:
            run.steps.append("infra")
            return infra

        class Supervisor:
            def __init__(self, env: Mapping[str, str], *, log: Callable[[str], None]) -> None:
                run.child_env = dict(env)

            def start(self) -> None:
                run.steps.append("services")

            def tick(self) -> None:
                pass

            def stop(self) -> None:
                pass

        def start_demo(env: dict[str, str], key: str, port: int) -> subprocess.Popen[bytes]:
            run.demo = subprocess.Popen([sys.executable, "-c", "pass"])
            return run.demo

        started = time.monotonic()

        class Stop:
            @property
            def requested(self) -> bool:
                if stop_when(run):
                    return True
                run.timed_out = time.monotonic() - started > deadline_s
                return run.timed_out

        self.monkeypatch.setattr(cli.run, "start_infra", start_infra)
        self.monkeypatch.setattr(
            cli.run, "_bootstrap", lambda env, **_: run.steps.append("bootstrap")
        )
        self.monkeypatch.setattr(cli.run, "Supervisor", Supervisor)
        self.monkeypatch.setattr(cli.run, "_wait_ready", self.wait_ready)
        self.monkeypatch.setattr(cli.run, "_start_demo", start_demo)
        self.monkeypatch.setattr(cli.run, "_Stop", Stop)
        console = Console(record=True, width=80)  # as on a pipe: 80 columns
        code = cli.run.run_system(console, demo=demo)
        self.output = console.export_text()
        return code


@pytest.fixture
def offline_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[OfflineRun]:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TIERSTREAM_API_KEYS",
                 "INGEST_API_KEYS", "SCORER_API_KEYS", "ACTIONS_API_KEYS",
                 "TIERSTREAM_LOG_LEVEL", "LOG_LEVEL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    ports = {name: free_port() for name in ("ingest", "scorer", "actions")}
    for name, port in ports.items():
        monkeypatch.setenv(f"{name.upper()}_PORT", str(port))
    run = OfflineRun(monkeypatch, ports)
    yield run
    if run.demo is not None and run.demo.poll() is None:
        run.demo.kill()
        run.demo.wait()


def test_the_demo_process_is_reaped_while_the_system_runs(offline_run: OfflineRun) -> None:
    # Never waited on, the finished demo stayed a zombie (`[python] <defunct>`) for the
    # whole session.
    def demo_reaped(run: OfflineRun) -> bool:
        return run.demo is not None and run.demo.returncode is not None

    assert offline_run(demo=True, stop_when=demo_reaped, deadline_s=5) == 0
    assert not offline_run.timed_out, "the finished demo was not reaped while running"


def test_a_taken_port_is_told_before_anything_starts(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found after the broker, Postgres, the migrations and the topics: seconds of start-up,
    # then a message that did not think of the likeliest cause, `make run` run twice.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        monkeypatch.setenv("SCORER_PORT", str(taken))
        assert offline_run() == 1
    assert offline_run.steps == []
    assert f"in use by another program: SCORER_PORT={taken} (another `tierstream run`?" in (
        " ".join(offline_run.output.split())
    )


@pytest.mark.parametrize(
    ("yours", "services", "told"),
    [
        ({}, {"TIERSTREAM_LOG_LEVEL": "WARNING"}, True),
        ({"TIERSTREAM_LOG_LEVEL": "info"}, {"TIERSTREAM_LOG_LEVEL": "info"}, False),
        ({"LOG_LEVEL": "DEBUG"}, {"TIERSTREAM_LOG_LEVEL": None, "LOG_LEVEL": "DEBUG"}, False),
    ],
)
def test_the_services_log_warnings_only_under_run_unless_you_chose_a_level(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch, yours: dict[str, str],
    services: dict[str, str | None], told: bool,
) -> None:  # fmt: skip
    # At INFO, some 300 JSON lines followed the banner within 2 s (a delivery written to the
    # log per action), and the key went with the banner out of sight.
    for name, value in yours.items():
        monkeypatch.setenv(name, value)
    assert offline_run() == 0
    assert {name: offline_run.child_env.get(name) for name in services} == services
    note = "logs     warnings and errors only; TIERSTREAM_LOG_LEVEL=INFO shows more"
    assert (note in offline_run.output) is told


def test_the_banner_fits_80_columns_and_its_command_is_on_one_line(
    offline_run: OfflineRun,
) -> None:
    # At 80 columns (a pipe's width) the panel wrapped the `try:` command and the route
    # lists mid-token: what was pasted from it was not the command.
    printed, key = _banner_of_a_run(offline_run)
    ports = offline_run.ports
    keys = dict.fromkeys(ports, key)
    panel = [line for line in printed if line[:1] in "╭│╰"]
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    expected = banner_lines(keys, urls, generated=key)
    assert [line[2:-2].rstrip() for line in panel[1:-1]] == expected  # none wrapped
    scorer = ports["scorer"]
    command = f"curl -H 'Authorization: Bearer {key}' http://127.0.0.1:{scorer}/v1/stats/tiers"
    assert f"try:     {command}" in printed


README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_shows_what_make_run_prints(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sample in the README had neither the route lists nor the `try:` line of the panel.
    _on_the_default_ports(monkeypatch)
    monkeypatch.setattr(secrets, "token_urlsafe", lambda size: "<printed-key>")
    url = "postgresql://postgres:@/postgres?host=/tmp/tierstream-pg-<random>/pgdata"
    infra = Infra("127.0.0.1:9092", url, embedded_kafka=True, embedded_postgres=True)
    assert offline_run(infra=infra) == 0
    printed = offline_run.output.partition("stopping...\n")[0]
    sample = re.search(r"```\n(starting infrastructure\.\.\.\n.*?)```", README.read_text(), re.S)
    assert sample is not None, "README has no sample of what `make run` prints"
    assert sample.group(1) == printed


def test_the_banner_prints_the_line_that_gives_another_shell_run_s_database(
    offline_run: OfflineRun,
) -> None:
    # `tierstream rules diff` and `migrate` read DATABASE_URL, which `run` keeps to its
    # children: in another shell they failed on the default address, and nothing said why.
    assert offline_run() == 0
    [line] = [line for line in offline_run.output.splitlines() if "DATABASE_URL=" in line]
    pasted = subprocess.run(["sh", "-c", f'{line}\nprintf %s "$DATABASE_URL"'], env={},
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert pasted.stdout == EMBEDDED_URL


def test_no_export_line_gives_away_the_password_of_your_database(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    yours = "postgresql://app:PASSW0RD@db.example:5432/tierstream"
    monkeypatch.setenv("DATABASE_URL", yours)
    infra = Infra("127.0.0.1:9092", yours, embedded_kafka=True, embedded_postgres=False)
    assert offline_run(infra=infra) == 0
    assert "PASSW0RD" not in offline_run.output
    assert "export DATABASE_URL" not in offline_run.output


@pytest.mark.parametrize("database_url", [None, "postgresql://postgres@127.0.0.1:1/tierstream"])
def test_migrate_failing_on_the_default_database_says_where_run_s_is(
    monkeypatch: pytest.MonkeyPatch, database_url: str | None
) -> None:
    import shared.migrations

    async def refused(url: str) -> None:
        raise OSError("Connect call failed ('127.0.0.1', 5432)")

    monkeypatch.setattr(shared.migrations, "upgrade_all", refused)
    result = CliRunner().invoke(app, ["migrate"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith("cannot migrate postgresql://postgres@127.0.0.1:")
    hint = "DATABASE_URL is not set: for the database of a `tierstream run`, paste the"
    assert (hint in line) is (database_url is None)


@pytest.mark.parametrize("database_url", [None, "postgresql://postgres@127.0.0.1:1/tierstream"])
def test_rules_diff_failing_on_the_default_database_says_where_run_s_is(
    monkeypatch: pytest.MonkeyPatch, database_url: str | None
) -> None:
    import services.scorer.rules_cli
    from shared.domain.rules import default_rules_path

    async def refused(*_: object) -> None:
        raise OSError("Connect call failed ('127.0.0.1', 5432)")

    monkeypatch.setattr(services.scorer.rules_cli, "diff_rules", refused)
    candidate = str(default_rules_path())
    result = CliRunner().invoke(
        app, ["rules", "diff", candidate], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith("cannot read today's customers from postgresql://postgres@127.0.0.1:")
    hint = "DATABASE_URL is not set: for the database of a `tierstream run`, paste the"
    assert (hint in line) is (database_url is None)


def pasted(lines: list[str], *names: str) -> dict[str, str]:
    """The variables `names` as a shell has them after the `export` lines among `lines`."""
    exports = [line for line in lines if line.startswith("export ")]
    script = "\n".join([*exports, *(f'printf "%s\\n" "${name}"' for name in names)])
    shell = subprocess.run(["sh", "-c", script], env={}, capture_output=True, text=True,
                           check=True)  # fmt: skip
    return dict(zip(names, shell.stdout.splitlines(), strict=True))


CLI_VARIABLES = ("TIERSTREAM_INGEST_URL", "TIERSTREAM_SCORER_URL", "TIERSTREAM_ACTIONS_URL",
                 "TIERSTREAM_API_KEY")  # fmt: skip


def test_on_other_ports_the_banner_prints_the_lines_that_point_the_cli_at_this_run(
    offline_run: OfflineRun,
) -> None:
    # Only DATABASE_URL was given: `tierstream report` in another shell went to the default
    # port 8081, another `run`'s maybe.
    printed, key = _banner_of_a_run(offline_run)
    assert "for `tierstream simulate`, `import` and `report` in another shell:" in printed
    ports = offline_run.ports
    assert pasted(printed, *CLI_VARIABLES) == {
        "TIERSTREAM_INGEST_URL": f"http://127.0.0.1:{ports['ingest']}",
        "TIERSTREAM_SCORER_URL": f"http://127.0.0.1:{ports['scorer']}",
        "TIERSTREAM_ACTIONS_URL": f"http://127.0.0.1:{ports['actions']}",
        "TIERSTREAM_API_KEY": key,
    }


def test_on_other_ports_your_own_key_is_not_exported(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERSTREAM_API_KEYS", "shop:MY-PRODUCTION-KEY")
    assert offline_run() == 0
    assert "MY-PRODUCTION-KEY" not in offline_run.output
    assert "export TIERSTREAM_SCORER_URL=" in offline_run.output
    assert "export TIERSTREAM_API_KEY=" not in offline_run.output


def test_on_the_default_ports_the_cli_needs_no_lines(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    _on_the_default_ports(monkeypatch)
    assert offline_run() == 0
    assert "export TIERSTREAM_" not in offline_run.output


@pytest.mark.parametrize(
    ("host", "reached"),
    [("127.0.0.2", "127.0.0.2"), ("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]")],
)
def test_run_polls_and_prints_the_address_the_services_bind_to(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch, host: str, reached: str
) -> None:
    # With INGEST_HOST=127.0.0.2, `run` polled 127.0.0.1 for 90 s, then failed; the banner
    # would have shown 127.0.0.1 too.
    monkeypatch.setattr(cli.run, "ports_in_use", lambda env, ports: None)  # no IPv6 here, maybe
    for name in PORTS:
        monkeypatch.setenv(f"{name.upper()}_HOST", host)
    assert offline_run() == 0
    ports = offline_run.ports
    urls = {name: f"http://{reached}:{port}" for name, port in ports.items()}
    assert offline_run.polled == urls
    printed = offline_run.output.splitlines()
    assert f"│ ingest   {urls['ingest']}/docs" in " ".join(printed)
    assert (
        f"metrics  http://{reached}:{{{ports['ingest']},{ports['scorer']},{ports['actions']}}}/metrics"
        in (offline_run.output)
    )
    assert pasted(printed, "TIERSTREAM_SCORER_URL") == {"TIERSTREAM_SCORER_URL": urls["scorer"]}
    assert f"{urls['scorer']}/v1/stats/tiers" in offline_run.output


def test_services_on_different_hosts_have_their_metrics_told_apart() -> None:
    urls = {**URLS, "ingest": "http://127.0.0.2:8080"}
    lines = banner_lines(dict.fromkeys(URLS, "k"), urls, generated="k")
    assert "ingest   http://127.0.0.2:8080/docs" in lines
    assert "metrics  /metrics of each address above" in lines


def test_a_service_that_never_became_ready_is_named_with_its_address(
    offline_run: OfflineRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "services did not become ready in time" named none of them, nor where it looked.
    offline_run.not_ready = {"scorer": "ConnectError: [Errno 111] Connection refused"}
    assert offline_run(stop_when=lambda run: False) == 1
    scorer = offline_run.ports["scorer"]
    assert (
        f"did not become ready in time: scorer at http://127.0.0.1:{scorer}/readyz"
        " (last: ConnectError: [Errno 111] Connection refused)"
    ) in " ".join(offline_run.output.split())


class _Ticks:
    def tick(self) -> None:
        pass


def test_the_readiness_check_polls_each_service_at_its_url_and_keeps_the_last_answer() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    stop = SimpleNamespace(requested=False)
    pending = cli.run._wait_ready(_Ticks(), stop, {"scorer": url}, {"scorer": "k"}, timeout=0.5)  # type: ignore[arg-type]
    assert list(pending) == ["scorer"] and pending["scorer"].startswith("ConnectError")


def test_a_wildcard_host_is_reached_at_its_loopback() -> None:
    from cli.supervisor import local_url, service_urls

    assert local_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert local_url("::", 8080) == "http://[::1]:8080"
    assert local_url("fe80::1", 8080) == "http://[fe80::1]:8080"
    assert local_url("localhost", 8080) == "http://localhost:8080"
    assert service_urls({"SCORER_HOST": "127.0.0.2", "SCORER_PORT": "18081"})["scorer"] == (
        "http://127.0.0.2:18081"
    )


def test_an_ipv6_host_is_probed_as_ipv6() -> None:
    # Probed with an IPv4 socket, `::` was reported as a port in use. (This machine and CI
    # have an IPv6 loopback; without one, this test fails rather than passes unseen.)
    with socket.socket(socket.AF_INET6) as held:
        held.bind(("::1", 0))
        held.listen()
        port = held.getsockname()[1]
        taken = ports_in_use({"INGEST_HOST": "::1"}, {"ingest": port})
        assert taken is not None and f"INGEST_PORT={port}" in taken, taken
    assert ports_in_use({"INGEST_HOST": "::1"}, {"ingest": port}) is None


def _banner_of_a_run(offline_run: OfflineRun) -> tuple[list[str], str]:
    """Run it; its printed lines and the API key the panel shows."""
    assert offline_run() == 0
    printed = offline_run.output.splitlines()
    [key] = [line.split()[-2] for line in printed if line.startswith("│ API key ")]
    return printed, key


def _on_the_default_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services on their default ports, whether or not another program holds them."""
    monkeypatch.setattr(cli.run, "ports_in_use", lambda env, ports: None)  # 8080 may be taken
    for name, port in PORTS.items():
        monkeypatch.setenv(f"{name.upper()}_PORT", str(port))
