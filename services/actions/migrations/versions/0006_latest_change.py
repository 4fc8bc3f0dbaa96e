"""The latest tier change applied per customer and dimension, so an older one is not acted on.

A customer's changes reach actions in the order the scorer made them, but only while they
stay on one partition: after partitions are added, or when records are replayed from a
dead-letter topic or an earlier offset, an older change can follow a newer one. It was
acted on as current (a silver customer enrolled in the VIP welcome; an old exit ended a
newer enrolment). The scorer's change `seq` (header `tierstream_seq`) orders them; a
change older than the latest applied is recorded in the inbox and does nothing else.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE actions.latest_change ("
        " customer_id text NOT NULL,"
        " dimension text NOT NULL,"
        " seq bigint NOT NULL,"
        " PRIMARY KEY (customer_id, dimension))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE actions.latest_change")
