"""An enrolment none of whose steps reached the customer ends `failed`, not `completed`.

Every step dead (attempts exhausted or a permanent error) used to complete the enrolment,
so the completion counts the business reads included sequences that sent nothing. Rows
that ended that way before this revision stay `completed`: which of them sent nothing can
still be told from their steps (the enrolments API lists them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_S = "actions"


def upgrade() -> None:
    op.drop_constraint("enrolment_status", "enrolment", schema=_S, type_="check")
    op.create_check_constraint(
        "enrolment_status",
        "enrolment",
        "status IN ('active', 'completed', 'failed', 'exited')",
        schema=_S,
    )


def downgrade() -> None:
    # The older code knows no `failed`: such enrolments read as it would have ended them.
    op.execute(f"UPDATE {_S}.enrolment SET status = 'completed' WHERE status = 'failed'")
    op.drop_constraint("enrolment_status", "enrolment", schema=_S, type_="check")
    op.create_check_constraint(
        "enrolment_status", "enrolment", "status IN ('active', 'completed', 'exited')", schema=_S
    )
