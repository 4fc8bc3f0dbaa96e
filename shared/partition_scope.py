"""Which customers time-driven work may touch: those whose partitions are read (no I/O).

Work decided by the clock (the scorer's time sweeps, actions' sequence steps) must not run
ahead of a customer's unread events: a downgrade decided before them would be emitted,
acted on, then undone; a win-back step would go to a customer whose purchase (the
sequence's goal) is still unread. So such work takes a customer only when, in every topic
the service consumes, the consumer that owns the customer's partition has applied all but
`max_lag` of its records: as that consumer recorded it in `<schema>.partition_progress`
recently (`fresh`) and in the consumer group's current generation. A record from an
earlier generation may come from a process that has since died or lost the partition;
after a rebalance the new owner's own record is awaited.

Every topic has the same partition count (TIERSTREAM_PARTITIONS) and every record is keyed
by its customer, so a customer is in the same partition number in each. Should the counts
differ (topics made by hand), a customer's partitions cannot be told from one number, and
the work waits until everything is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One row of `partition_progress`, with whether it was heard recently enough."""

    topic: str
    partition: int
    generation: int
    behind: int
    fresh: bool


@dataclass(frozen=True, slots=True)
class PartitionScope:
    """`partitions` None: every customer. Otherwise the customers whose partition, among
    `partitions`, is in `settled`; `held` names the partitions not read (for the logs)."""

    partitions: int | None
    settled: frozenset[int] = frozenset()
    held: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return self.partitions is None

    @property
    def nothing(self) -> bool:
        return self.partitions is not None and not self.settled


EVERYTHING = PartitionScope(None)


def settled_scope(
    counts: Mapping[str, int | None],
    progress: Iterable[PartitionProgress],
    *,
    generation: int | None,
    max_lag: int,
) -> PartitionScope:
    """The customers whose partitions are read, from each consumed topic's partition count
    (None: the topic does not exist, so it holds no records) and the progress the group's
    consumers recorded.

    `generation` is this process's consumer group generation (None or negative: it has not
    joined yet, so it cannot tell a current record from a stale one)."""
    sizes_of: dict[str, int] = {topic: n for topic, n in counts.items() if n}
    joined = generation is not None and generation >= 0
    settled_in = {
        (row.topic, row.partition)
        for row in progress
        if joined and row.fresh and row.generation == generation and row.behind <= max_lag
    }
    held = tuple(
        f"{topic}/{p}"
        for topic, n in sorted(sizes_of.items())
        for p in range(n)
        if (topic, p) not in settled_in
    )
    if not joined:  # with no topic known yet either, say why (the logs, the held gauge)
        return PartitionScope(
            max(sizes_of.values(), default=0), held=held or ("not in the consumer group yet",)
        )
    if not held:
        return EVERYTHING
    sizes = set(sizes_of.values())
    if len(sizes) != 1:
        return PartitionScope(max(sizes), held=held)
    (n,) = sizes
    settled = frozenset(p for p in range(n) if all((topic, p) in settled_in for topic in sizes_of))
    return PartitionScope(n, settled, held)
