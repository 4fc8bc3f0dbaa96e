"""Running the migrations: two migrators at once, a database migrated by a newer release,
and moving a schema back (`tierstream migrate`, actions at its start)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest
from typer.testing import CliRunner

from cli.main import app
from services.actions.db import migrate as migrate_actions
from shared.db import asyncpg_dsn
from shared.migrations import MigrationError, current_revision, upgrade_all
from tests.support.infra import free_service_ports

_revision = current_revision


def _cli(database_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["migrate", *args], env={"DATABASE_URL": database_url})
    return result.exit_code, result.output


async def test_two_migrators_at_once_both_succeed(database_url: str) -> None:
    # Both ran CREATE SCHEMA and the first revision together: one failed with a duplicate
    # key in pg_namespace (and `tierstream migrate` did not take actions' lock at all).
    # Processes, as in a deployment: Alembic's context is one per process.
    actions = "import asyncio, sys; from services.actions.db import migrate;"
    commands = [
        [sys.executable, "-m", "cli.main", "migrate"],
        [sys.executable, "-m", "cli.main", "migrate"],
        [sys.executable, "-c", f"{actions} asyncio.run(migrate(sys.argv[1]))", database_url],
    ]
    env = {**os.environ, "DATABASE_URL": database_url}
    processes = [
        await asyncio.create_subprocess_exec(*command, env=env, stderr=subprocess.PIPE)
        for command in commands
    ]
    outcomes = [(await p.wait(), (await p.stderr.read()).decode()) for p in processes if p.stderr]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert await _revision(database_url, "scorer") is not None
    assert await _revision(database_url, "actions") is not None


async def test_a_database_migrated_by_a_newer_release_is_refused_in_one_line(
    database_url: str,
) -> None:
    await upgrade_all(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("UPDATE actions.alembic_version_actions SET version_num = '0099'")
    finally:
        await conn.close()
    code, output = await asyncio.to_thread(_cli, database_url)
    assert code == 1
    assert "cannot migrate" in output and "'0099'" in output and "newer" in output
    assert "Traceback" not in output
    with pytest.raises(MigrationError, match="newer release"):
        await migrate_actions(database_url)  # what actions runs at its start


async def test_run_refuses_a_database_migrated_by_a_newer_release_as_migrate_does(
    database_url: str, kafka_bootstrap: str
) -> None:
    # `run` printed alembic's whole traceback: it caught only OSError and SQLAlchemyError.
    await upgrade_all(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("UPDATE scorer.alembic_version_scorer SET version_num = '0099'")
    finally:
        await conn.close()
    env = {**os.environ, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "COLUMNS": "300", **free_service_ports()}  # fmt: skip
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "run", "--no-demo", env=env, stderr=subprocess.PIPE
    )  # its own process: `run` installs signal handlers, which only a main thread may
    output = (await run.communicate())[1].decode()
    assert run.returncode == 1, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot migrate" in line]
    code, migrate_output = await asyncio.to_thread(_cli, database_url)
    assert code == 1 and line == migrate_output.strip()
    assert "'0099'" in line and "newer release" in line


async def test_a_schema_moves_back_to_a_revision_and_forward_again(database_url: str) -> None:
    await upgrade_all(database_url)
    head = await _revision(database_url, "scorer")

    async def to(revision: str, *confirm: str) -> tuple[int, str, str | None]:
        code, output = await asyncio.to_thread(_cli, database_url, "--service", "scorer",
                                               "--to", revision, *confirm)  # fmt: skip
        return code, output, await _revision(database_url, "scorer")

    code, output, now = await to("0001", "--yes")
    assert (code, now) == (0, "0001"), output
    assert await _revision(database_url, "actions") is not None  # the other one untouched
    # Forward with --to too: it was refused as "not a valid downgrade target ... a newer
    # release", and `head` as no such revision.
    code, output, now = await to("0003")
    assert (code, now) == (0, "0003"), output
    code, output, now = await to("head")
    assert (code, now) == (0, head), output
    code, output, now = await to("0098")
    assert code == 2 and "no revision '0098'" in output and "0001" in output, output
    assert "newer" not in output and now == head
    code, output = await asyncio.to_thread(_cli, database_url, "--service", "scorer")
    assert (code, await _revision(database_url, "scorer")) == (0, head), output


@pytest.mark.parametrize("revision", ["base", "0001"])
async def test_a_move_back_without_yes_is_refused_in_one_line_and_changes_nothing(
    database_url: str, revision: str
) -> None:
    # `--to base` dropped every scorer table, data included, without a word.
    await upgrade_all(database_url)
    head = await _revision(database_url, "scorer")
    code, output = await asyncio.to_thread(_cli, database_url, "--service", "scorer",
                                           "--to", revision)  # fmt: skip
    assert code == 2, output
    assert output.strip() == (
        f"--to: scorer: moving back from {head} to {revision} drops what the later revisions"
        " added, data included; add --yes to do it"
    )
    assert await _revision(database_url, "scorer") == head
    code, output = await asyncio.to_thread(_cli, database_url, "--service", "scorer",
                                           "--to", "head")  # fmt: skip
    assert code == 0, output  # not back: nothing to confirm


def test_migrate_help_says_a_move_back_needs_yes() -> None:
    result = CliRunner().invoke(app, ["migrate", "--help"], env={"COLUMNS": "200"})
    assert "--yes" in result.output and "Moving back needs --yes" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--to", "0001"], "--to needs --service"), (["--service", "ingest"], "must be one of")],
)
def test_migrate_refuses_options_that_name_no_schema(args: list[str], message: str) -> None:
    code, output = _cli("postgresql://nobody@127.0.0.1:1/none", *args)
    assert code == 2 and message in output


async def test_a_url_with_libpq_parameters_migrates_as_the_services_connect(
    database_url: str,
) -> None:
    # Through SQLAlchemy, `sslmode` reached asyncpg.connect() as a keyword it does not take: a
    # 451-line TypeError for the URL a managed Postgres hands out, which the services accept.
    separator = "&" if "?" in database_url else "?"
    url = f"{database_url}{separator}sslmode=prefer&application_name=ops"
    code, output = await asyncio.to_thread(_cli, url)
    assert (code, "migrations applied" in output) == (0, True), output
    assert await _revision(database_url, "scorer") is not None


async def test_failed_enrolments_read_as_completed_after_moving_actions_back(
    database_url: str,
) -> None:
    # Actions 0004 added `failed`; the older code and its check constraint know no such status.
    await upgrade_all(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO actions.enrolment (customer_id, sequence, playbook, tier_change_id,"
            " status, trigger_at, enrolled_at, ended_at)"
            " VALUES ('c', 'welcome', 'new', 'chg', 'failed', now(), now(), now())"
        )
        code, output = await asyncio.to_thread(_cli, database_url, "--service", "actions",
                                               "--to", "0003", "--yes")  # fmt: skip
        assert code == 0, output
        assert await conn.fetchval("SELECT status FROM actions.enrolment") == "completed"
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE actions.enrolment SET status = 'failed'")
        code, output = await asyncio.to_thread(_cli, database_url, "--service", "actions")
        assert (code, await _revision(database_url, "actions")) == (0, "0008"), output
        await conn.execute("UPDATE actions.enrolment SET status = 'failed'")
    finally:
        await conn.close()
