"""The CLI given a setting, an option or an input it cannot use: one line saying which, the
exit code for it, and no traceback. Each command runs as its own process, as a user runs it;
`run` against the real broker and Postgres, one of them replaced by a closed port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.domain.rules import default_rules_path
from shared.embedded import free_port
from tests.support.infra import free_service_ports, unique_namespace, with_database

BAD_KEY = "clé-0123456789"  # no HTTP header can carry it


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def tierstream(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Ran:
    """`tierstream ARGS` in its own process; nothing listens at the default service URLs."""
    closed = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={
            **os.environ,
            "COLUMNS": "200",
            **{f"TIERSTREAM_{s}_URL": closed for s in ("INGEST", "SCORER", "ACTIONS")},
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=120,  # a hang detector: every command here ends at once
        cwd=cwd or Path(__file__).parents[2],
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def one_line(ran: Ran) -> str:
    """The single line the command printed on stderr (failing the test otherwise)."""
    assert "Traceback" not in ran.output, ran.output
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--days", "inf"), ("--days", "nan"), ("--days", "3000000"), ("--rate", "inf")],
)
def test_simulate_refuses_an_extreme_option_as_a_usage_error(option: str, value: str) -> None:
    ran = tierstream("simulate", "--customers", "5", "--days", "3", option, value, "--dry-run")
    assert ran.exit_code == 2, ran.output
    assert "Traceback" not in ran.output
    assert f"Invalid value for '{option}'" in ran.stderr


@pytest.mark.parametrize(
    "args",
    [("report",), ("simulate", "--customers", "2", "--days", "3")],
    ids=["report", "simulate"],
)
def test_a_key_no_header_can_carry_is_bad_configuration_named_not_shown(
    args: tuple[str, ...],
) -> None:
    ran = tierstream(*args, env={"TIERSTREAM_API_KEY": BAD_KEY})
    assert ran.exit_code == 2, ran.output
    line = one_line(ran)
    assert line.startswith("invalid configuration: TIERSTREAM_API_KEY: "), line
    assert BAD_KEY not in ran.output


def test_import_refuses_a_key_no_header_can_carry_at_once(tmp_path: Path) -> None:
    source = tmp_path / "logins.csv"
    source.write_text("customer_id,occurred_at,channel\nkey-a,2026-05-10,web\n")
    ran = tierstream("import", str(source), "--type", "login", env={"TIERSTREAM_API_KEY": BAD_KEY})
    assert ran.exit_code == 4, ran.output  # fix the API key first
    assert "TIERSTREAM_API_KEY" in one_line(ran)
    assert BAD_KEY not in ran.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logins.csv"]  # no rejects file


def test_import_refuses_a_header_that_names_a_column_twice(tmp_path: Path) -> None:
    source = tmp_path / "logins.csv"
    source.write_text(
        "customer_id,occurred_at,channel,customer_id\ndup-a,2026-05-10,web,dup-b\n"
    )  # which customer_id is meant cannot be known
    ran = tierstream("import", str(source), "--type", "login")
    assert ran.exit_code == 4, ran.output
    assert "more than once: 'customer_id'" in one_line(ran)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logins.csv"]


def test_an_import_with_an_unusable_ingest_url_is_refused_before_touching_anything(
    tmp_path: Path,
) -> None:
    source = tmp_path / "logins.csv"
    source.write_text("customer_id,occurred_at,channel\nnone-a,2026-05-10,web\n")
    earlier = "line,reason\n2,an earlier run's\n"
    (tmp_path / "logins.csv.rejects.csv").write_text(earlier)
    # Without http:// the URL is refused before the import starts: no checkpoint, and the
    # earlier run's rejects file left as it was (it used to fail at the first send).
    ran = tierstream(
        "import", str(source), "--type", "login", env={"TIERSTREAM_INGEST_URL": "127.0.0.1:1"}
    )
    assert ran.exit_code == 4, ran.output
    assert "TIERSTREAM_INGEST_URL='127.0.0.1:1' is not a URL like http://" in one_line(ran)
    assert (tmp_path / "logins.csv.rejects.csv").read_text() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logins.csv", "logins.csv.rejects.csv"]


RULES = str(default_rules_path())
BAD_SETTINGS = {
    "rules diff, DATABASE_URL not a URL": (
        ("rules", "diff", RULES),
        {"DATABASE_URL": "bogus"},
        "invalid configuration: DATABASE_URL: not a database URL",
    ),
    "rules diff, bad scorer setting": (
        ("rules", "diff", RULES),
        {"SCORER_PORT": "abc"},
        "invalid configuration: SCORER_PORT: ",
    ),
    "migrate, bad shared setting": (
        ("migrate",),
        {"TIERSTREAM_PARTITIONS": "x"},
        "invalid configuration: TIERSTREAM_PARTITIONS: ",
    ),
    "migrate, port out of range": (
        ("migrate",),
        {"DATABASE_URL": "postgresql://u:secret@127.0.0.1:99999/db"},
        "invalid configuration: DATABASE_URL: its port 99999 is not between 1 and 65535",
    ),
    "migrate, another database's scheme": (
        ("migrate",),
        {"DATABASE_URL": "mysql://u:secret@127.0.0.1:3306/db"},
        "invalid configuration: DATABASE_URL: its scheme mysql:// is not Postgres's",
    ),
    "rules diff, not a database scheme": (
        ("rules", "diff", RULES),
        {"DATABASE_URL": "http://u:secret@127.0.0.1:5432/db"},
        "invalid configuration: DATABASE_URL: its scheme http:// is not Postgres's",
    ),
    "rules diff, port not a number": (
        ("rules", "diff", RULES),
        {"DATABASE_URL": "postgresql://u:secret@127.0.0.1:abc/db"},
        "invalid configuration: DATABASE_URL: its port is not a number",
    ),
}


@pytest.mark.parametrize(("args", "env", "says"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_a_database_command_with_a_bad_setting_names_it_in_one_line(
    args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    ran = tierstream(*args, env=env)
    assert ran.exit_code == 2, ran.output  # bad configuration, as the services say it
    assert one_line(ran).startswith(says), ran.stderr
    assert "secret" not in ran.output


@pytest.mark.parametrize("away", ["database", "broker"])
def test_run_with_an_unreachable_database_or_broker_says_which_in_one_line(
    away: str, kafka_bootstrap: str, database_url: str
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    if away == "database":
        env = {"DATABASE_URL": f"postgresql://postgres:secret@{nowhere}/nowhere",
               "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}  # fmt: skip
        says = f"cannot migrate postgresql://postgres:***@{nowhere}/nowhere: "
    else:
        env = {"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": nowhere}
        says = f"cannot create the topics on the broker at {nowhere}: "
    ran = tierstream("run", "--no-demo", env={**env, **free_service_ports()})
    assert ran.exit_code == 1, ran.output
    assert "Traceback" not in ran.output
    failed = [line for line in ran.stderr.splitlines() if "cannot" in line]
    assert len(failed) == 1, ran.stderr
    assert failed[0].startswith(says), failed
    assert "secret" not in ran.output


@pytest.mark.parametrize("service", ["ingest", "scorer", "actions"])
def test_a_service_without_a_broker_at_start_says_so_in_one_line_and_exits_1(service: str) -> None:
    # Before: about a hundred lines of KafkaConnectionError traceback.
    ran = tierstream(service, env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                                   "TIERSTREAM_API_KEYS": "k", f"{service.upper()}_PORT":
                                   str(free_port())})  # fmt: skip
    assert ran.exit_code == 1, ran.output
    assert "cannot start: a broker or database is unreachable" in ran.output
    assert "Traceback" not in ran.output


@pytest.mark.parametrize("service", ["ingest", "scorer", "actions"])
def test_a_service_refuses_an_unknown_tracing_mode_before_connecting(service: str) -> None:
    # Before: a pydantic traceback once connected to the broker (ingest, actions), or
    # nothing at all (the scorer makes no spans).
    closed = f"127.0.0.1:{free_port()}"
    env = {"TIERSTREAM_TRACING": "jaeger", "TIERSTREAM_API_KEYS": "k",
           "KAFKA_BOOTSTRAP_SERVERS": closed}  # fmt: skip
    ran = tierstream(service, env=env)
    assert ran.exit_code == 2, ran.output
    assert one_line(ran).startswith("invalid configuration: TIERSTREAM_TRACING: "), ran.stderr


@pytest.mark.parametrize("database", ["missing", "never migrated"])
def test_a_scorer_whose_database_cannot_serve_it_says_why_in_one_line_and_exits_1(
    database: str, kafka_bootstrap: str, pg_server_url: str, database_url: str
) -> None:
    # Before: 140-270 lines of asyncpg traceback.
    if database == "missing":
        url, says = with_database(pg_server_url, "no_such_database"), "the database refused"
    else:
        url, says = database_url, "the database is not migrated: run `tierstream migrate`"
    ran = tierstream("scorer", env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                    "DATABASE_URL": url, "TIERSTREAM_API_KEYS": "k",
                                    "TIERSTREAM_TOPIC_NAMESPACE": unique_namespace(),
                                    "SCORER_PORT": str(free_port())})  # fmt: skip
    assert ran.exit_code == 1, ran.output
    assert "Traceback" not in ran.output
    [failed] = [line for line in ran.stderr.splitlines() if "cannot start" in line]
    assert f"cannot start: {says}" in failed
