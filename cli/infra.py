"""Embedded infrastructure for `tierstream run` and `tierstream infra`."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass

from shared.embedded import EmbeddedKafka, EmbeddedPostgres, free_port


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Infra:
    """Where the broker and the database are, and whether we started them."""

    kafka_bootstrap_servers: str
    database_url: str
    embedded_kafka: bool
    embedded_postgres: bool


def start_infra(stack: ExitStack, *, env: dict[str, str] | None = None) -> Infra:
    """Use KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else start embedded servers.

    Embedded Postgres always starts empty: the embedded broker keeps data in memory, and
    offsets stored in a database that outlived its broker would point past the new topics.
    """
    env = dict(os.environ if env is None else env)
    kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
    embedded_kafka = not kafka
    if not kafka:
        port = 9092 if _port_is_free(9092) else free_port()
        kafka = stack.enter_context(EmbeddedKafka(port=port)).bootstrap_servers
    database = env.get("DATABASE_URL")
    embedded_pg = not database
    if not database:
        pg = stack.enter_context(EmbeddedPostgres())
        database = pg.database_url("postgres")
    return Infra(kafka, database, embedded_kafka, embedded_pg)
