"""Requests ingest refuses as a whole: halved until they pass, the size that passed kept.

Ingest's limits (events per request, body bytes) are its own settings, which the CLI cannot
read; a refusal that names no event (a 413, a 422 about the `events` list) is taken as one
about the request's size, so the request is split in halves, down to one event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cli.api_client import BatchRejected

T = TypeVar("T")


@dataclass
class RequestSize:
    """The most events per request ingest took without refusing the request as a whole (for
    its count or size): learned by halving once, kept for the following requests."""

    max_events: int | None = None

    def learn(self, passed: int) -> None:
        """A request of `passed` events is being tried after a larger one was refused."""
        self.max_events = min(self.max_events or passed, passed)

    def split(self, items: Sequence[T]) -> Iterator[Sequence[T]]:
        """`items` in consecutive requests of the learned size (all at once before any)."""
        step = self.max_events or len(items) or 1
        for start in range(0, len(items), step):
            yield items[start : start + step]


def send_in_halves(
    send: Callable[[Sequence[T]], int], items: Sequence[T], size: RequestSize
) -> int:
    """`send(items)` (returns the count accepted); when ingest refuses the request as a
    whole and it held more than one event, the two halves instead, recursively. Any other
    refusal is `send`'s to handle, or raised."""
    try:
        return send(items)
    except BatchRejected as exc:
        if exc.event_errors(len(items)) or len(items) < 2:
            raise
    half = len(items) // 2
    size.learn(half)
    return send_in_halves(send, items[:half], size) + send_in_halves(send, items[half:], size)
