"""Topic names: the event type an event topic carries, whatever the namespace."""

from __future__ import annotations

import pytest

from shared.topics import EventType, Topics, event_type_of


@pytest.mark.parametrize("namespace", ["tierstream", "acme.prod", "t-1"])
def test_each_event_topic_names_its_type_and_nothing_else_does(namespace: str) -> None:
    topics = Topics(namespace)
    assert [event_type_of(t) for t in topics.events] == list(EventType)
    for other in (topics.tier_changed, Topics.dlq(topics.purchases), "purchases", "a.logins.v2"):
        assert event_type_of(other) is None
