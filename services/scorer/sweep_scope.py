"""Which customers a time sweep may take: those whose partitions are settled (no I/O here).

A time-driven downgrade decided before a customer's unread events would be emitted, acted
on, then undone by them. So a sweep takes a customer only when, in every event topic, the
consumer that owns the customer's partition has applied all but `max_lag` of its records:
as that consumer reported it to `scorer.partition_progress` recently (`fresh`) and in the
consumer group's current generation. A report from an earlier generation may come from
a process that has since died or lost the partition; after a rebalance the new owner's
own report is awaited.

Every event topic has the same partition count (TIERSTREAM_PARTITIONS), so a customer is in
the same partition number in each. Should the counts differ (topics made by hand), a
customer's partitions cannot be told from one number, and sweeps wait until everything
is settled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One row of `scorer.partition_progress`, with whether it was heard recently enough."""

    topic: str
    partition: int
    generation: int
    behind: int
    fresh: bool


@dataclass(frozen=True, slots=True)
class SweepScope:
    """`partitions` None: every customer. Otherwise the customers whose partition, among
    `partitions`, is in `settled`; `held` lists the others (for the logs)."""

    partitions: int | None
    settled: frozenset[int] = frozenset()
    held: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return self.partitions is None

    @property
    def nothing(self) -> bool:
        return self.partitions is not None and not self.settled


EVERYTHING = SweepScope(None)


def sweep_scope(
    counts: Mapping[str, int | None],
    progress: Iterable[PartitionProgress],
    *,
    generation: int | None,
    max_lag: int,
) -> SweepScope:
    """The scope of a sweep, from each event topic's partition count (None: the topic does
    not exist, so it holds no events) and the progress reported by the group's consumers.

    `generation` is this process's consumer group generation (None or below 1: it has not
    joined yet, so it cannot tell a current report from a stale one)."""
    sizes_of: dict[str, int] = {topic: n for topic, n in counts.items() if n}
    joined = generation is not None and generation >= 1
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
    if not joined:
        return SweepScope(max(sizes_of.values(), default=0), held=held)
    if not held:
        return EVERYTHING
    sizes = set(sizes_of.values())
    if len(sizes) != 1:
        return SweepScope(max(sizes), held=held)
    (n,) = sizes
    settled = frozenset(p for p in range(n) if all((topic, p) in settled_in for topic in sizes_of))
    return SweepScope(n, settled, held)
