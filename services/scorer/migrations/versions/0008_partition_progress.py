"""How far each consumer is through its partitions, for the time sweeps of every process.

Time sweeps must not decide a downgrade before a customer's unread events are applied.
Each process used to check only its own consumer, so a process that had caught up swept
the customers of partitions another process was still behind on (after a restart, during
an autoscaler's scale-up, during a rebalance). Now every process writes, for each partition
it owns, how many records it has left and when it last heard the partition's end
(`partition_progress`), stamped with the consumer group's generation; and a sweep takes
only customers whose partitions are settled in that table.

`kafka_partition(key, partitions)` is the Kafka default partitioner (murmur2 of the key's
UTF-8 bytes, as ingest's producer places a customer's events), so a sweep can tell a
customer's partition from its id. 32-bit products are split in 16-bit halves to stay in
bigint.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

S = "scorer"

# h * 0x5bd1e995 mod 2^32, for 0 <= h < 2^32: the low 16 bits of m (0xe995 = 59797), plus the
# high 16 bits (0x5bd1 = 23505) whose product only counts below bit 16 before the shift.
_MUL = "((({x}) * 59797 + ((({x}) * 23505) & 65535) * 65536) & 4294967295)"

_KAFKA_PARTITION = f"""
CREATE FUNCTION scorer.kafka_partition(key text, partitions integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    data bytea := convert_to(key, 'UTF8');
    len integer := length(data);
    base integer := len - len % 4;
    h bigint := 2538058380 # len;  -- the seed 0x9747b28c, xor the length
    k bigint;
BEGIN
    FOR i IN 0 .. len / 4 - 1 LOOP
        k := get_byte(data, i * 4)::bigint
             | (get_byte(data, i * 4 + 1)::bigint << 8)
             | (get_byte(data, i * 4 + 2)::bigint << 16)
             | (get_byte(data, i * 4 + 3)::bigint << 24);
        k := {_MUL.format(x="k")};
        k := k # (k >> 24);
        k := {_MUL.format(x="k")};
        h := {_MUL.format(x="h")} # k;
    END LOOP;
    IF len % 4 >= 3 THEN h := h # (get_byte(data, base + 2)::bigint << 16); END IF;
    IF len % 4 >= 2 THEN h := h # (get_byte(data, base + 1)::bigint << 8); END IF;
    IF len % 4 >= 1 THEN
        h := h # get_byte(data, base)::bigint;
        h := {_MUL.format(x="h")};
    END IF;
    h := h # (h >> 13);
    h := {_MUL.format(x="h")};
    h := h # (h >> 15);
    RETURN ((h & 2147483647) % partitions)::integer;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "partition_progress",
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("behind", sa.BigInteger, nullable=False),
        sa.Column("heard_at", sa.TIMESTAMP(timezone=True), nullable=False),
        schema=S,
    )
    op.execute(_KAFKA_PARTITION)


def downgrade() -> None:
    op.execute("DROP FUNCTION scorer.kafka_partition(text, integer)")
    op.drop_table("partition_progress", schema=S)
