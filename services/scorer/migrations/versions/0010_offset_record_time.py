"""The timestamp of the last record applied, beside each stored offset, to tell its log.

An offset alone could not tell the log it was read from from another one that had grown
past it (a topic deleted and created again, a move to another cluster): the consumer
sought into the middle of the new log and its first records were never read, with no
metric and a lag of 0. The consumer now stores the timestamp of the last record of each
batch with the offset (`last_record_offset` is then `next_offset - 1`), reads that record
again at assignment, and counts and logs the records skipped when it is not the same
(`tierstream_scorer_offsets_skipped_total`, shared/fenced_consumer.py). Nullable, no default: no
table rewrite. An older release advances `next_offset` without them, so the pair names
another offset and is not used.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE scorer.consumer_offset"
        " ADD COLUMN last_record_offset bigint, ADD COLUMN last_record_timestamp_ms bigint"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE scorer.consumer_offset"
        " DROP COLUMN last_record_offset, DROP COLUMN last_record_timestamp_ms"
    )
