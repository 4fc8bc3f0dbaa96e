"""Index the inbox by processing time, for the retention loop that prunes old rows.

The partial unique indexes behind "one open task per customer and playbook" and "one active
enrolment per customer and sequence" (`task_one_open_uq`, `enrolment_one_active_uq`) exist
since 0001; nothing to add for them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-10
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # goal_event gets no index: one row per customer, updated on every purchase (an index on
    # last_at would cost every update its HOT path), and an hourly scan of it is cheap.
    op.create_index("inbox_processed_at_idx", "inbox", ["processed_at"], schema="actions")


def downgrade() -> None:
    op.drop_index("inbox_processed_at_idx", table_name="inbox", schema="actions")
