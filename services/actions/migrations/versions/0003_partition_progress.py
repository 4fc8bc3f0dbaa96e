"""How far each consumer is through its partitions, so sequence steps wait for them.

After an outage the scheduler sent the steps that fell due meanwhile at once, while the
consumer was still reading the backlog: a win-back step went to a customer whose purchase
(the sequence's goal) or reactivation was among the unread records. Now every process
records, for each partition it owns, how many records it has left and when it last heard
the partition's end (`partition_progress`), stamped with the consumer group's generation;
and steps are sent only to customers whose partitions are read (shared/group_progress.py).
`kafka_partition(key, partitions)` tells a customer's partition from its id
(shared/progress_ddl.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from shared import progress_ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in progress_ddl.create("actions"):
        op.execute(statement)


def downgrade() -> None:
    for statement in progress_ddl.drop("actions"):
        op.execute(statement)
