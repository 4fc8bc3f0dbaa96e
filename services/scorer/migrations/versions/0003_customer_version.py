"""A write count on each customer row, so a scorer can trust the state it cached.

Every write of a customer row sets `version = version + 1`. A scorer keeps the records it
committed in memory with the version they were written at; when it locks the row again
and the version is unchanged, no other writer has touched it and the stored state need
not be read and decoded again (services/scorer/state_cache.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

S = "scorer"


def upgrade() -> None:
    # Adding a column with a constant default rewrites no rows (Postgres 11+).
    op.add_column(
        "customer",
        sa.Column("version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        schema=S,
    )


def downgrade() -> None:
    op.drop_column("customer", "version", schema=S)
