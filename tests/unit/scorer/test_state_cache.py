"""The state cache hands each record out once and holds at most its capacity."""

from __future__ import annotations

from services.scorer.evaluation import CustomerRecord
from services.scorer.state_cache import StateCache


def _record(customer_id: str, version: int = 1) -> CustomerRecord:
    return CustomerRecord.empty(customer_id, version)


def test_a_taken_record_is_no_longer_held() -> None:
    cache = StateCache(10)
    cache.put([_record("a"), _record("b")])
    taken = cache.take(["a", "x"])
    assert list(taken) == ["a"] and taken["a"].customer_id == "a"
    assert cache.take(["a"]) == {}
    assert len(cache) == 1


def test_the_least_recently_put_record_goes_first() -> None:
    cache = StateCache(2)
    cache.put([_record("a"), _record("b")])
    cache.put([_record("a", 2)])  # a is now the most recent
    cache.put([_record("c")])
    assert set(cache.take(["a", "b", "c"])) == {"a", "c"}


def test_a_newer_put_replaces_the_held_record() -> None:
    cache = StateCache(5)
    cache.put([_record("a", 1)])
    cache.put([_record("a", 3)])
    assert cache.take(["a"])["a"].version == 3


def test_capacity_zero_holds_nothing() -> None:
    cache = StateCache(0)
    cache.put([_record("a")])
    assert len(cache) == 0 and cache.take(["a"]) == {}


def test_counts_drain_to_zero() -> None:
    cache = StateCache(1)
    cache.count(hits=3, misses=2, stale=1)
    cache.count(hits=1, misses=0, stale=0)
    drained = cache.drain_counts()
    assert (drained.hits, drained.misses, drained.stale) == (4, 2, 1)
    again = cache.drain_counts()
    assert (again.hits, again.misses, again.stale) == (0, 0, 0)
