"""Which rules file is current: `rules_activation (version, activated_at)`.

A scorer process records its rules version when it starts. Re-classifying customers for a
rules change (cause `rule_change`) then only runs in the processes holding the version
activated last: during a rolling deploy, a process still on the old file no longer
migrates the customers the new processes moved, back to the old rules. Starting a process
with the old file again (a rollback) makes that version the newest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

S = "scorer"


def upgrade() -> None:
    op.create_table(
        "rules_activation",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column(
            "activated_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("rules_activation", schema=S)
