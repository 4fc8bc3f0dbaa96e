"""Batch shaping: lanes split by partition number, about equal in size."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from services.scorer.polling import Batch, records_behind, split_lanes
from shared.fenced_consumer import drop_repeats


def batch_of(sizes: dict[tuple[str, int], int]) -> Batch:
    return {TopicPartition(t, p): list(range(n)) for (t, p), n in sizes.items()}


def test_a_partition_number_stays_in_one_lane_across_topics_and_lanes_balance() -> None:
    batch = batch_of({("logins", 0): 900, ("purchases", 0): 100, ("logins", 1): 600,
                      ("logins", 2): 500, ("support", 1): 50})  # fmt: skip
    lanes = split_lanes(batch, 2)
    numbers = [{tp.partition for tp in lane} for lane in lanes]
    assert numbers == [{0}, {1, 2}]  # 1000 records against 1150
    assert sorted(tp for lane in lanes for tp in lane) == sorted(batch)
    assert lanes[0][TopicPartition("purchases", 0)] is batch[TopicPartition("purchases", 0)]


def test_one_lane_or_one_partition_gives_the_batch_back_whole() -> None:
    batch = batch_of({("logins", 3): 10, ("purchases", 3): 5})
    assert split_lanes(batch, 4) == [batch]
    assert split_lanes(batch_of({("a", 0): 1, ("a", 1): 1}), 1) == [
        batch_of({("a", 0): 1, ("a", 1): 1})
    ]


def records(*offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o) for o in offsets]


def test_repeated_and_already_applied_records_are_dropped() -> None:
    a, b, c = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)
    batch: Batch = {a: records(0, 1, 2, 3, 0, 1, 2, 3, 4), b: records(5, 6, 7), c: records(1, 2)}
    kept = drop_repeats(batch, {a: None, b: 7, c: 9})
    assert {tp: [r.offset for r in rs] for tp, rs in kept.items()} == {a: [0, 1, 2, 3, 4], b: [7]}


def test_records_behind_counts_what_the_broker_holds_past_each_partitions_last_record() -> None:
    a, b, c = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)
    batch: Batch = {a: records(10, 11), b: records(5), c: []}
    highwater = {a: 112, b: 6, c: 50}
    # a: offsets 12..111 are still to come; b is at its end; c has no record to count from.
    assert records_behind(batch, highwater.get) == 100
    assert records_behind(batch, lambda tp: None) == 0  # nothing fetched yet: unknown
