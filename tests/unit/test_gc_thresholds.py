"""The scorer's relaxed collector thresholds: fewer rounds, but cyclic garbage still goes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.gcpause import LONG_LIVED_HEAP_THRESHOLDS, collect_less_often


@pytest.fixture
def relaxed() -> Iterator[None]:
    before, was_enabled = gc.get_threshold(), gc.isenabled()
    gc.enable()
    collect_less_often()
    yield
    gc.set_threshold(*before)
    if not was_enabled:
        gc.disable()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_cyclic_garbage_is_collected_without_an_explicit_collect(relaxed: None) -> None:
    assert gc.get_threshold() == LONG_LIVED_HEAP_THRESHOLDS
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None
    # Enough container allocations to pass the young generation's threshold several times.
    kept: list[list[int]] = [[] for _ in range(3 * LONG_LIVED_HEAP_THRESHOLDS[0])]
    assert gone() is None, "a young cycle outlived several young-generation thresholds"
    del kept


def test_the_young_generation_is_not_collected_every_few_hundred_allocations(
    relaxed: None,
) -> None:
    gc.collect()
    rounds = gc.get_stats()[0]["collections"]
    kept: list[list[int]] = [[] for _ in range(LONG_LIVED_HEAP_THRESHOLDS[0] // 2)]
    assert gc.get_stats()[0]["collections"] == rounds  # the default (700) would run ~35
    del kept
