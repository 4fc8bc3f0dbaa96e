"""A service that cannot start because of its surroundings says why in one line and exits 1;
anything else keeps its traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError
from sqlalchemy.exc import ArgumentError, DBAPIError

from shared.migrations import SchemaBehind
from shared.served_namespace import OtherNamespace, refuse_other
from shared.service import run_service, start_failure

CAUSES = {
    "broker away": (KafkaConnectionError("no broker"), "a broker or database is unreachable"),
    "database away": (ConnectionRefusedError(111, "refused"), "is unreachable"),
    "unknown host": (socket.gaierror(-2, "Name or service not known"), "does not resolve"),
    "no such database": (
        asyncpg.InvalidCatalogNameError('database "nowhere" does not exist'),
        "the database refused the connection",
    ),
    "no such role": (
        asyncpg.InvalidAuthorizationSpecificationError('role "nobody" does not exist'),
        "the database refused the connection",
    ),
    "never migrated": (
        asyncpg.UndefinedTableError('relation "scorer.rules_activation" does not exist'),
        "not migrated: run `tierstream migrate`",
    ),
    "migrated to an older release": (
        SchemaBehind("scorer: the schema is at revision 0007; this release's latest is 0008"),
        "not migrated: run `tierstream migrate`",
    ),
    "not a URL": (ArgumentError("Could not parse SQLAlchemy URL"), "not a database URL"),
    "another deployment's database": (
        OtherNamespace("scorer: this database serves the topic namespace 'prod', ..."),
        "the database serves another topic namespace",
    ),
}


async def _raising(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(("exc", "says"), CAUSES.values(), ids=CAUSES.keys())
def test_a_service_that_cannot_start_exits_1_naming_the_cause(
    exc: BaseException, says: str
) -> None:
    found = start_failure(exc)
    assert found is not None and says in found[0]
    with pytest.raises(SystemExit) as stopped:
        run_service(_raising(exc), event_loop="asyncio")
    assert stopped.value.code == 1


def test_a_driver_error_wrapped_by_the_migrations_is_found_with_its_own_first_line() -> None:
    # Alembic runs on SQLAlchemy, which wraps asyncpg's error (twice) with the statement.
    inner = asyncpg.InvalidCatalogNameError('database "nowhere" does not exist')
    try:
        try:
            raise RuntimeError("adapted") from inner
        except RuntimeError as adapted:
            raise DBAPIError("SELECT 1", None, adapted) from adapted
    except DBAPIError as wrapped:
        found = start_failure(wrapped)
    assert found == (
        "the database refused the connection: check DATABASE_URL's database and user",
        'database "nowhere" does not exist',
    )


def test_a_schema_behind_the_release_is_named_with_both_revisions() -> None:
    behind = SchemaBehind("actions: the schema is at revision 0005; this release's latest is 0006")
    assert start_failure(behind) == (
        "the database is not migrated: run `tierstream migrate`",
        "actions: the schema is at revision 0005; this release's latest is 0006",
    )


def test_a_database_of_another_namespace_is_named_with_both_and_the_ways_out() -> None:
    # Staging's scorer on prod's database relayed prod's changes to staging's topic.
    with pytest.raises(OtherNamespace) as refused:
        refuse_other("scorer", "prod", "staging")
    assert start_failure(refused.value) == (
        "the database serves another topic namespace",
        "scorer: this database serves the topic namespace 'prod', and this process's"
        " TIERSTREAM_TOPIC_NAMESPACE is 'staging': point DATABASE_URL at the database of"
        " 'staging', or set TIERSTREAM_TOPIC_NAMESPACE=prod; to move this database to"
        " 'staging' on purpose: UPDATE scorer.topic_namespace SET namespace = 'staging'"
        " (docs/OPERATIONS.md, Topic namespace)",
    )


@pytest.mark.parametrize("served", [None, "prod"])
def test_a_database_serving_no_namespace_or_the_same_is_not_refused(served: str | None) -> None:
    refuse_other("actions", served, "prod")


def test_the_move_statement_quotes_the_namespace() -> None:
    with pytest.raises(OtherNamespace, match="SET namespace = 'it''s' "):
        refuse_other("actions", "prod", "it's")


def test_any_other_error_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_service(_raising(ZeroDivisionError("a bug")), event_loop="asyncio")
    try:
        raise ValueError("a bug in a handler")
    except ValueError as bug:
        # Raised while handling a refused connection, not from it: still a bug.
        bug.__context__ = ConnectionRefusedError(111, "refused")
        assert start_failure(bug) is None


@pytest.mark.parametrize("service", ["ingest", "scorer", "actions"])
def test_a_service_whose_port_is_taken_names_its_variable_in_one_line(service: str) -> None:
    # uvicorn found it once the broker and the database answered, logged "[Errno 98] address
    # already in use" and exited 3, naming no variable.
    variable = f"{service.upper()}_PORT"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        env = {**os.environ, variable: str(taken), "TIERSTREAM_API_KEYS": "k:key-0123456789",
               "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # fmt: skip
        env.pop(f"{service.upper()}_HOST", None)
        done = subprocess.run([sys.executable, "-m", f"services.{service}"], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    moved = taken + 10000 if taken <= 55535 else taken - 10000
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"cannot start: in use by another program: {variable}={taken} (another `tierstream"
        f" run`? stop it, or set another port: {variable}={moved} tierstream {service})"
    ]
