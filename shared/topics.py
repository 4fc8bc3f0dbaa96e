"""Topic names: the one definition every producer, consumer and test uses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    PURCHASE = "purchase"
    LOGIN = "login"
    SUPPORT = "support"


_EVENT_TOPIC_STEMS = {
    EventType.PURCHASE: "purchases",
    EventType.LOGIN: "logins",
    EventType.SUPPORT: "support",
}

_TYPE_OF_STEM = {stem: event_type for event_type, stem in _EVENT_TOPIC_STEMS.items()}


def event_type_of(topic: str) -> EventType | None:
    """The event type an event topic (`<namespace>.<stem>.v1`, any namespace) carries; None
    for another topic."""
    rest, _, version = topic.rpartition(".")
    return _TYPE_OF_STEM.get(rest.rpartition(".")[2]) if version == "v1" else None


SCORER_GROUP = "tierstream-scorer"
ACTIONS_GROUP = "tierstream-actions"


@dataclass(frozen=True)
class Topics:
    """All topic names under one namespace (default `tierstream`)."""

    namespace: str = "tierstream"

    def for_event(self, event_type: EventType | str) -> str:
        return f"{self.namespace}.{_EVENT_TOPIC_STEMS[EventType(event_type)]}.v1"

    @property
    def purchases(self) -> str:
        return self.for_event(EventType.PURCHASE)

    @property
    def logins(self) -> str:
        return self.for_event(EventType.LOGIN)

    @property
    def support(self) -> str:
        return self.for_event(EventType.SUPPORT)

    @property
    def events(self) -> tuple[str, str, str]:
        return (self.purchases, self.logins, self.support)

    @property
    def tier_changed(self) -> str:
        return f"{self.namespace}.tier-changed.v1"

    @staticmethod
    def dlq(topic: str) -> str:
        return f"{topic}.dlq"

    def all(self) -> list[str]:
        """Every topic the system needs created, dead-letter topics included."""
        main = [*self.events, self.tier_changed]
        return main + [self.dlq(t) for t in main]
