"""`tierstream run`'s banner: the key the services accept, never a key of yours."""

from __future__ import annotations

import socket

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.database import redacted
from cli.infra import Infra
from cli.main import app
from cli.run import api_key_for, banner_lines, first_api_key, ports_in_use, print_banner
from shared.embedded import free_port


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


def test_the_banner_shows_a_generated_key_and_never_one_of_yours() -> None:
    # It printed TIERSTREAM_API_KEYS' key twice (the key line and the curl example) into the
    # terminal's scrollback; only a key made for this run is the user's to see there.
    made = "generated-for-this-run"
    shown = "\n".join(banner_lines(dict.fromkeys(PORTS, made), PORTS, generated=made))
    assert shown.count(made) == 2
    yours = dict.fromkeys(PORTS, "MY-PRODUCTION-KEY")
    assert "MY-PRODUCTION-KEY" not in "\n".join(banner_lines(yours, PORTS, generated=None))
    mixed = {**dict.fromkeys(PORTS, made), "ingest": "MY-INGEST-KEY"}
    lines = "\n".join(banner_lines(mixed, PORTS, generated=made))
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
        assert ports_in_use({}, ports) == (
            f"in use by another program: INGEST_PORT={taken} (stop it, or set another port)"
        )
    assert ports_in_use({}, ports) is None


def test_the_embedded_database_is_printed_as_given_and_a_password_hidden_in_place() -> None:
    # Rendered by SQLAlchemy, the socket directory came out escaped (host=%2Ftmp%2F...).
    url = "postgresql://postgres:made-for-this-run@/postgres?host=/tmp/tierstream-pg-x/pgdata"
    console = Console(record=True, width=300)
    print_banner(console, Infra("k:9092", url, embedded_kafka=True, embedded_postgres=True), [])
    assert url in console.export_text()
    assert redacted(url) == "postgresql://postgres:***@/postgres?host=/tmp/tierstream-pg-x/pgdata"
