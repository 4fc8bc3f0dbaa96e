"""Scorer tables: customer state, inbox, tier_change outbox/history, offsets, cut points.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

S = "scorer"
TS = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    _customer()
    op.create_table(
        "inbox",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("processed_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    _tier_change()
    op.create_table(
        "consumer_offset",
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "cut_points",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("data", JSONB, nullable=False),
        schema=S,
    )
    op.create_index("cut_points_created_at_idx", "cut_points", ["created_at"], schema=S)


def _customer() -> None:
    op.create_table(
        "customer",
        sa.Column("customer_id", sa.Text, primary_key=True),
        # Null only inside the transaction that first creates the row (a lock placeholder).
        sa.Column("state", JSONB, nullable=True),
        sa.Column("value_tier", sa.Text),
        sa.Column("activity_level", sa.Text),
        sa.Column("lifecycle_stage", sa.Text),
        sa.Column("r_score", sa.SmallInteger),
        sa.Column("f_score", sa.SmallInteger),
        sa.Column("m_score", sa.SmallInteger),
        sa.Column("class_since", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("rules_version", sa.Text),
        sa.Column("cut_points_version", sa.Text),
        sa.Column("next_review_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index(
        "customer_next_review_at_idx",
        "customer",
        ["next_review_at"],
        schema=S,
        postgresql_where=sa.text("next_review_at IS NOT NULL"),
    )
    for column in ("value_tier", "activity_level", "lifecycle_stage"):
        op.create_index(f"customer_{column}_idx", "customer", [column, "customer_id"], schema=S)


def _tier_change() -> None:
    op.create_table(
        "tier_change",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False, unique=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("dimension", sa.Text, nullable=False),
        sa.Column("from_class", sa.Text),
        sa.Column("to_class", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("features", JSONB, nullable=False),
        sa.Column("attributes", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("rules_version", sa.Text, nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("emitted_at", TS, nullable=False),
        sa.Column("published_at", TS),
        schema=S,
    )
    op.create_index(
        "tier_change_unpublished_idx",
        "tier_change",
        ["seq"],
        schema=S,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("tier_change_customer_idx", "tier_change", ["customer_id", "seq"], schema=S)


def downgrade() -> None:
    for table in ("cut_points", "consumer_offset", "tier_change", "inbox", "customer"):
        op.drop_table(table, schema=S)
