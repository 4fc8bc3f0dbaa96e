"""The outbox as a narrow pending table; publication times in a table of their own.

Until now the relay found unpublished changes through a partial index on
`tier_change.published_at IS NULL` and marked each one by updating that column. That
update rewrote the whole change row (features and attributes JSON) and, since the column
is in the index's predicate, added an entry to each of its four indexes: it cost Postgres
about as much as inserting the change. Now:

- `tier_change_pending (seq)` holds the changes not yet published. A statement trigger
  fills it from every insert into `tier_change` (the COPY of a batch included), so no
  writer can forget it and no round trip is needed to learn the seqs Postgres assigned.
- The relay deletes what it published from there and records the time in
  `tier_change_published (seq, published_at)`: two narrow rows instead of a wide one.
- `tier_change` is written once and never updated.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

S = "scorer"
TS = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tier_change_pending", sa.Column("seq", sa.BigInteger, primary_key=True), schema=S
    )
    op.create_table(
        "tier_change_published",
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("published_at", TS, nullable=False),
        schema=S,
    )
    op.execute(
        "INSERT INTO scorer.tier_change_pending (seq)"
        " SELECT seq FROM scorer.tier_change WHERE published_at IS NULL"
    )
    op.execute(
        "INSERT INTO scorer.tier_change_published (seq, published_at)"
        " SELECT seq, published_at FROM scorer.tier_change WHERE published_at IS NOT NULL"
    )
    op.drop_index("tier_change_unpublished_idx", table_name="tier_change", schema=S)
    op.drop_column("tier_change", "published_at", schema=S)
    # A statement-level trigger sees all of a statement's rows at once (a transition
    # table), so a batch's COPY costs one INSERT ... SELECT, not one call per row.
    op.execute(
        """
        CREATE FUNCTION scorer.tier_change_pending_insert() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO scorer.tier_change_pending (seq) SELECT seq FROM inserted;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER tier_change_pending AFTER INSERT ON scorer.tier_change"
        " REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT"
        " EXECUTE FUNCTION scorer.tier_change_pending_insert()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tier_change_pending ON scorer.tier_change")
    op.execute("DROP FUNCTION scorer.tier_change_pending_insert()")
    op.add_column("tier_change", sa.Column("published_at", TS), schema=S)
    op.execute(
        "UPDATE scorer.tier_change AS c SET published_at = p.published_at"
        " FROM scorer.tier_change_published AS p WHERE p.seq = c.seq"
    )
    op.create_index(
        "tier_change_unpublished_idx",
        "tier_change",
        ["seq"],
        schema=S,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.drop_table("tier_change_published", schema=S)
    op.drop_table("tier_change_pending", schema=S)
