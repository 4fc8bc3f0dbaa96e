"""Which topic namespace the database serves: `topic_namespace (namespace)`, one row.

Two deployments given one database by mistake (staging's services with prod's
DATABASE_URL, another TIERSTREAM_TOPIC_NAMESPACE) mixed without a word: staging's actions
acted on staging's changes in prod's tables and sent prod's due steps and alerts through
staging's channels; the stored offsets are per topic name, so nothing conflicted. Now the
first actions process to start records its namespace here, and one started with another
refuses to start (shared/served_namespace.py).

A database that served one namespace already has it recorded here: the one its stored
offsets name, when they name exactly one (`<namespace>.<stem>.v1`). With none (a new
database) or several (offsets of a namespace used before, or of a mix-up), nothing is
recorded, and the first actions process of this release to start records its own.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE actions.topic_namespace ("
        # One row at most: the key's only value is true.
        " one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row),"
        " namespace text NOT NULL)"
    )
    op.execute(
        "INSERT INTO actions.topic_namespace (namespace)"
        " SELECT min(namespace) FROM (SELECT DISTINCT substring(topic FROM"
        r" '^(.+)\.(purchases|logins|support|tier-changed)\.v1$') AS namespace"
        " FROM actions.consumer_offset) AS found"
        " WHERE namespace IS NOT NULL HAVING count(*) = 1"
    )


def downgrade() -> None:
    op.execute("DROP TABLE actions.topic_namespace")
