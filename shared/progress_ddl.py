"""The tables and function behind shared/group_progress.py, created by each service's
migration in its own schema (scorer 0008, actions 0003).

Migrations run this text as it is when they are applied: change it only together with a
new migration that replaces the objects it created.
"""

from __future__ import annotations

# h * 0x5bd1e995 mod 2^32, for 0 <= h < 2^32: the low 16 bits of m (0xe995 = 59797), plus the
# high 16 bits (0x5bd1 = 23505), whose product counts only below bit 16 before the shift.
_MUL = "((({x}) * 59797 + ((({x}) * 23505) & 65535) * 65536) & 4294967295)"


def kafka_partition_function(schema: str) -> str:
    """`<schema>.kafka_partition(key, partitions)`: the Kafka default partitioner (murmur2 of
    the key's UTF-8 bytes, as the producers place a customer's records), so time-driven work
    can tell a customer's partition from its id. 32-bit products are split in 16-bit halves
    to stay in bigint."""
    return f"""
CREATE FUNCTION {schema}.kafka_partition(key text, partitions integer) RETURNS integer
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


def progress_table(schema: str) -> str:
    """`<schema>.partition_progress`: per group and partition, the records its owner had left
    and when it heard the partition's end, stamped with the group generation."""
    return f"""
CREATE TABLE {schema}.partition_progress (
    group_id text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    generation integer NOT NULL,
    behind bigint NOT NULL,
    heard_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
)
"""


def create(schema: str) -> list[str]:
    """The statements of an upgrade."""
    return [progress_table(schema), kafka_partition_function(schema)]


def drop(schema: str) -> list[str]:
    """The statements of a downgrade."""
    return [
        f"DROP FUNCTION {schema}.kafka_partition(text, integer)",
        f"DROP TABLE {schema}.partition_progress",
    ]
