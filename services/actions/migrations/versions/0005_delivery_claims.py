"""A delivery's claim count, the token an attempt's outcome is recorded under.

The attempt count was that token, but a step put back past quiet hours gives its claim
back (`attempts - 1`), so the count returned to the number of the attempt before it: an
older attempt whose lease had run out then recorded its failure over the deferral, and
the step died unsent. `claims` only grows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: no rewrite of the table. Older processes do not count claims;
    # a newer one's token is the count as it claimed.
    op.execute("ALTER TABLE actions.delivery ADD COLUMN claims integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE actions.delivery DROP COLUMN claims")
