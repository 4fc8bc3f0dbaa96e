"""A publication order for the change feed: `tier_change_published.pub_seq`.

`GET /v1/changes` paged by `seq`, the order changes were inserted in. Transactions commit
in another order (consumer lanes, the sweeper, re-bucketing and other scorer processes
write at once), so a page read while seq n was not yet committed returned n + 1, and its
cursor skipped n for good. The relay publishes under one advisory lock, one round at a
time, so numbers drawn inside its rounds follow commit order: a change that becomes
visible later always gets a later `pub_seq`. The feed pages on it, and lists what was
published (the tier-changed topic's content); rows published before this migration keep
their `seq` as their position.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

S = "scorer"
SEQUENCE = "scorer.tier_change_published_pub_seq"


def upgrade() -> None:
    op.add_column("tier_change_published", sa.Column("pub_seq", sa.BigInteger), schema=S)
    op.execute("UPDATE scorer.tier_change_published SET pub_seq = seq")
    op.execute(f"CREATE SEQUENCE {SEQUENCE} OWNED BY scorer.tier_change_published.pub_seq")
    op.execute(
        f"SELECT setval('{SEQUENCE}',"
        " (SELECT COALESCE(max(seq), 0) + 1 FROM scorer.tier_change_published), false)"
    )
    op.execute(
        "ALTER TABLE scorer.tier_change_published"
        f" ALTER COLUMN pub_seq SET DEFAULT nextval('{SEQUENCE}'),"
        " ALTER COLUMN pub_seq SET NOT NULL"
    )
    op.create_index(
        "tier_change_published_pub_seq_idx",
        "tier_change_published",
        ["pub_seq"],
        unique=True,
        schema=S,
    )


def downgrade() -> None:
    op.drop_index("tier_change_published_pub_seq_idx", "tier_change_published", schema=S)
    op.drop_column("tier_change_published", "pub_seq", schema=S)  # drops the owned sequence
