"""The latest tier change applied per customer and dimension, so an older one is not acted on.

A customer's changes reach actions in the order the scorer made them, but only while they
stay on one partition: after partitions are added, or when records are replayed from a
dead-letter topic or an earlier offset, an older change can follow a newer one. It was
acted on as current (a silver customer enrolled in the VIP welcome; an old exit ended a
newer enrolment). Such a change is now recorded in the inbox and does nothing else.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE actions.latest_change ("
        " customer_id text NOT NULL,"
        " dimension text NOT NULL,"
        " emitted_at timestamptz NOT NULL,"
        " occurred_at timestamptz NOT NULL,"
        " PRIMARY KEY (customer_id, dimension))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE actions.latest_change")
