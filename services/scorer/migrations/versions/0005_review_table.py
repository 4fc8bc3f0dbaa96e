"""Review times in a narrow table of their own, so most customer writes are HOT updates.

Nearly every write of a customer row changed `next_review_at` (the review time moves with
the customer's latest activity), and since that column was indexed, Postgres could not
update the row in place on its page (a HOT update): each write added an entry to all five
indexes of the table. The review time now lives in `customer_review (customer_id,
next_review_at)` with the sweeper's index, and the customer table keeps free space on its
pages (fillfactor 70) for the new row versions. A write that changes no class touches no
index of the wide table any more; only the narrow table's two indexes take an entry, and
only when the review time changed (docs/performance-log.md, ninth pass: 68-71 against 41-42 µs
a customer for the write).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

S = "scorer"
TS = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_review",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("next_review_at", TS, nullable=True),
        schema=S,
    )
    op.execute(
        "INSERT INTO scorer.customer_review (customer_id, next_review_at)"
        " SELECT customer_id, next_review_at FROM scorer.customer"
    )
    op.create_index(
        "customer_review_next_review_at_idx",
        "customer_review",
        ["next_review_at"],
        schema=S,
        postgresql_where=sa.text("next_review_at IS NOT NULL"),
    )
    op.drop_index("customer_next_review_at_idx", table_name="customer", schema=S)
    op.drop_column("customer", "next_review_at", schema=S)
    # Room on each page for the next version of its rows (applies to pages written from now).
    op.execute("ALTER TABLE scorer.customer SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE scorer.customer RESET (fillfactor)")
    op.add_column("customer", sa.Column("next_review_at", TS), schema=S)
    op.execute(
        "UPDATE scorer.customer AS c SET next_review_at = r.next_review_at"
        " FROM scorer.customer_review AS r WHERE r.customer_id = c.customer_id"
    )
    op.create_index(
        "customer_next_review_at_idx",
        "customer",
        ["next_review_at"],
        schema=S,
        postgresql_where=sa.text("next_review_at IS NOT NULL"),
    )
    op.drop_table("customer_review", schema=S)
