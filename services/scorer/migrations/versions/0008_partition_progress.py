"""How far each consumer is through its partitions, for the time sweeps of every process.

Time sweeps must not decide a downgrade before a customer's unread events are applied.
Each process used to check only its own consumer, so a process that had caught up swept
the customers of partitions another process was still behind on (after a restart, during
an autoscaler's scale-up, during a rebalance). Now every process records, for each
partition it owns, how many records it has left and when it last heard the partition's
end (`partition_progress`), stamped with the consumer group's generation; and a sweep
takes only customers whose partitions are read (shared/group_progress.py).
`kafka_partition(key, partitions)` tells a customer's partition from its id
(shared/progress_ddl.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from shared import progress_ddl

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in progress_ddl.create("scorer"):
        op.execute(statement)


def downgrade() -> None:
    for statement in progress_ddl.drop("scorer"):
        op.execute(statement)
