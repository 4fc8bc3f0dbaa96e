"""Which customers clock-driven work may take (shared/partition_scope.py): only those whose
partition every consumed topic's consumer recently recorded as read, in the group's current
generation."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from shared.partition_scope import EVERYTHING, PartitionProgress, PartitionScope, settled_scope

TOPICS = ("logins", "orders", "support")


def _row(
    topic: str, p: int, *, generation: int = 7, behind: int = 0, fresh: bool = True
) -> PartitionProgress:
    return PartitionProgress(topic, p, generation, behind, fresh)


def _all(n: int = 3, *, generation: int = 7) -> list[PartitionProgress]:
    return [_row(t, p, generation=generation) for t in TOPICS for p in range(n)]


def _scope(rows: list[PartitionProgress], *, n: int = 3, generation: int | None = 7,
           max_lag: int = 10) -> PartitionScope:  # fmt: skip
    return settled_scope(dict.fromkeys(TOPICS, n), rows, generation=generation, max_lag=max_lag)


def test_every_customer_when_every_partition_is_settled() -> None:
    scope = _scope([dataclasses.replace(r, behind=10) for r in _all()])
    assert scope == EVERYTHING and scope.everything and not scope.nothing


def _replace(
    rows: list[PartitionProgress], topic: str, p: int, **changes: int | bool
) -> list[PartitionProgress]:
    return [
        dataclasses.replace(r, **changes) if (r.topic, r.partition) == (topic, p) else r  # type: ignore[arg-type]
        for r in rows
    ]


def test_a_partition_behind_in_one_topic_holds_its_customers_back() -> None:
    scope = _scope(_replace(_all(), "orders", 1, behind=11))
    assert (scope.partitions, scope.settled, scope.held) == (3, frozenset({0, 2}), ("orders/1",))
    assert not scope.everything and not scope.nothing


def test_a_stale_report_holds_its_partition() -> None:
    scope = _scope(_replace(_all(), "support", 2, fresh=False))
    assert (scope.settled, scope.held) == (frozenset({0, 1}), ("support/2",))


def test_a_report_from_an_earlier_generation_holds_its_partition() -> None:
    # Written before the last rebalance: its writer may have died or lost the partition.
    scope = _scope(_replace(_all(), "logins", 0, generation=6))
    assert (scope.settled, scope.held) == (frozenset({1, 2}), ("logins/0",))


def test_a_partition_nobody_reported_is_held() -> None:
    rows = [r for r in _all() if (r.topic, r.partition) != ("orders", 2)]
    assert (_scope(rows).settled, _scope(rows).held) == (frozenset({0, 1}), ("orders/2",))


def test_nothing_before_this_process_has_joined_the_group() -> None:
    for generation in (None, -1):
        scope = _scope(_all(generation=generation or 7), generation=generation)
        assert scope.nothing and len(scope.held) == 9
    alone = settled_scope({}, [], generation=None, max_lag=0)
    assert alone.nothing and alone.held == ("not in the consumer group yet",)


def test_generation_0_is_a_joined_group() -> None:
    # tansu numbers a group's first generation 0 (Kafka 1); aiokafka holds -1 before a join.
    assert _scope(_all(generation=0), generation=0) == EVERYTHING


def test_topics_that_do_not_exist_hold_nothing() -> None:
    rows = [r for r in _all() if r.topic != "support"]
    counts = {"logins": 3, "orders": 3, "support": None}
    assert settled_scope(counts, rows, generation=7, max_lag=0) == EVERYTHING
    assert settled_scope(dict.fromkeys(TOPICS), [], generation=7, max_lag=0) == EVERYTHING


def test_topics_with_different_partition_counts_hold_everyone_until_all_are_settled() -> None:
    counts = {"logins": 3, "orders": 4, "support": 3}
    rows = [_row(t, p) for t, n in counts.items() for p in range(n)]
    assert settled_scope(counts, rows, generation=7, max_lag=0) == EVERYTHING
    scope = settled_scope(counts, rows[1:], generation=7, max_lag=0)
    assert scope.nothing and scope.held == ("logins/0",)


ROWS = st.lists(
    st.builds(
        PartitionProgress,
        topic=st.sampled_from(TOPICS),
        partition=st.integers(0, 3),
        generation=st.integers(5, 7),
        behind=st.integers(0, 20),
        fresh=st.booleans(),
    ),
    max_size=30,
)


@given(rows=ROWS, n=st.integers(1, 4), max_lag=st.integers(0, 20))
def test_a_partition_is_settled_exactly_when_every_topic_reported_it_settled(
    rows: list[PartitionProgress], n: int, max_lag: int
) -> None:
    scope = _scope(rows, n=n, max_lag=max_lag)

    def ok(topic: str, p: int) -> bool:
        return any(
            (r.topic, r.partition) == (topic, p) and r.fresh and r.generation == 7
            and r.behind <= max_lag
            for r in rows
        )  # fmt: skip

    settled = {p for p in range(n) if all(ok(t, p) for t in TOPICS)}
    held = {f"{t}/{p}" for t in TOPICS for p in range(n) if not ok(t, p)}
    assert set(scope.held) == held
    if not held:
        assert scope.everything
    else:
        assert (scope.partitions, scope.settled) == (n, frozenset(settled))
