"""The collector pause around a request's synchronous work: off inside, as it was after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.gcpause import gc_paused


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()


def test_collections_are_held_off_inside_and_resume_after_even_on_error() -> None:
    gc.enable()
    with pytest.raises(ValueError), gc_paused():
        assert not gc.isenabled()
        raise ValueError("bad body")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
