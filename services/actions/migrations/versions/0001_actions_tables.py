"""Actions tables: inbox, offsets, tasks, enrolments, deliveries (alerts, task pushes, steps).

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

S = "actions"
TS = sa.TIMESTAMP(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("processed_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
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
        "goal_event",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("event_type", sa.Text, primary_key=True),
        sa.Column("last_at", TS, nullable=False),
        schema=S,
    )
    _task()
    _enrolment()
    _delivery()


def _task() -> None:
    op.create_table(
        "task",
        _id(),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("tier_change_id", sa.Text, nullable=False),
        sa.Column("playbook", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("assignee", sa.Text),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="open"),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("completed_at", TS),
        # How many tier changes asked for this task (a second trigger updates, not duplicates).
        sa.Column("triggers", sa.Integer, nullable=False, server_default="1"),
        sa.CheckConstraint("priority IN ('low', 'normal', 'high', 'urgent')", name="task_priority"),
        sa.CheckConstraint("status IN ('open', 'done', 'cancelled')", name="task_status"),
        schema=S,
    )
    op.create_index(
        "task_one_open_uq",
        "task",
        ["customer_id", "playbook"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index("task_customer_idx", "task", ["customer_id", "id"], schema=S)
    op.create_index("task_queue_idx", "task", ["queue", "status", "due_at"], schema=S)
    op.create_index("task_status_due_idx", "task", ["status", "due_at"], schema=S)


def _enrolment() -> None:
    op.create_table(
        "enrolment",
        _id(),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.Text, nullable=False),
        sa.Column("playbook", sa.Text, nullable=False),
        sa.Column("tier_change_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("exit_reason", sa.Text),
        # Event time of the triggering change: a goal event after it ends the enrolment.
        sa.Column("trigger_at", TS, nullable=False),
        sa.Column("enrolled_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.CheckConstraint("status IN ('active', 'completed', 'exited')", name="enrolment_status"),
        schema=S,
    )
    op.create_index(
        "enrolment_one_active_uq",
        "enrolment",
        ["customer_id", "sequence"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index("enrolment_customer_idx", "enrolment", ["customer_id", "id"], schema=S)


def _delivery() -> None:
    op.create_table(
        "delivery",
        _id(),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("tier_change_id", sa.Text),
        sa.Column("playbook", sa.Text),
        sa.Column("audience", sa.Text),
        sa.Column("enrolment_id", sa.BigInteger, sa.ForeignKey(f"{S}.enrolment.id")),
        sa.Column("step_index", sa.Integer),
        sa.Column("step_name", sa.Text),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text),
        sa.Column("subject", sa.Text, nullable=False, server_default=""),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        # Business time (the service clock): never sent before it.
        sa.Column("due_at", TS, nullable=False),
        # Wall time (Postgres clock): retry back-off and the in-flight lease.
        sa.Column("available_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.CheckConstraint("kind IN ('alert', 'task', 'step')", name="delivery_kind"),
        sa.CheckConstraint("channel IN ('webhook', 'email', 'log')", name="delivery_channel"),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'dead', 'cancelled')", name="delivery_status"
        ),
        sa.UniqueConstraint("enrolment_id", "step_index", name="delivery_step_uq"),
        schema=S,
    )
    op.create_index(
        "delivery_due_idx",
        "delivery",
        ["kind", "due_at", "id"],
        schema=S,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("delivery_customer_idx", "delivery", ["customer_id", "kind", "id"], schema=S)
    op.create_index("delivery_enrolment_idx", "delivery", ["enrolment_id"], schema=S)


def downgrade() -> None:
    for table in ("delivery", "enrolment", "task", "goal_event", "consumer_offset", "inbox"):
        op.drop_table(table, schema=S)
