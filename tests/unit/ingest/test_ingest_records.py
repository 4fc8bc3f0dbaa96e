"""What ingest hands the producer: partitions as aiokafka picks them, record bytes as before."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import unquote

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.publisher import Event, event_json, record_for
from shared.contracts import CustomerLoggedIn, LineItem, PurchaseMade, SupportTicketUpdated
from shared.kafka import cloudevent_headers, uri_reference
from shared.kafka_batches import KeyPartitioner

AIOKAFKA = DefaultPartitioner()
AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
# RFC 3986: unreserved and reserved characters, and percent-encoded octets, nothing else.
URI_REFERENCE = re.compile(r"(?:[A-Za-z0-9\-._~!#$&'()*+,/:;=?@\[\]]|%[0-9A-F]{2})*")


@given(
    keys=st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), max_size=200),
    count=st.integers(min_value=1, max_value=64),
)
def test_a_key_lands_on_the_partition_aiokafkas_default_partitioner_picks(
    keys: list[bytes], count: int
) -> None:
    partitions = list(range(count))
    ours = KeyPartitioner(cache_size=16)  # small: hits, misses and evictions all happen
    for key in keys * 2:  # the second round is answered from the cache
        assert ours.partition(key, partitions) == AIOKAFKA(key, partitions, partitions)


def test_many_customer_ids_over_the_production_partition_count_match_aiokafka() -> None:
    partitions = list(range(6))
    ours = KeyPartitioner()
    keys = [f"cust-{i}".encode() for i in range(20_000)]
    assert [ours.partition(k, partitions) for k in keys] == [
        AIOKAFKA(k, partitions, partitions) for k in keys
    ]
    assert len({ours.partition(k, partitions) for k in keys}) == 6


def sample_events() -> list[Event]:
    return [
        PurchaseMade(
            event_id="p1",
            customer_id="c\u00e9",
            occurred_at=AT,
            order_id="o1",
            amount=Decimal("0.10"),
            currency="EUR",
            items=[LineItem(sku="s", quantity=2, price=Decimal("0.05"))],
            attributes={"ratio": 2.0, "seats": 3, "b2b": True, "none": None},
        ),
        CustomerLoggedIn(
            event_id="l1", customer_id="c2", occurred_at=AT, channel="web", source="crm"
        ),
        SupportTicketUpdated(
            event_id="s1", customer_id="c3", occurred_at=AT, ticket_id="t", action="opened", nps=9
        ),
    ]


def test_record_values_are_the_models_json_byte_for_byte() -> None:
    for event in sample_events():
        assert event_json(event) == event.model_dump_json().encode()


def test_records_carry_the_customer_key_and_cloudevents_headers() -> None:
    for event in sample_events():
        key, value, headers = record_for(event)
        assert key == event.customer_id.encode() and value == event_json(event)
        assert headers == cloudevent_headers(
            ce_id=event.event_id,
            ce_source=event.source or "unknown",
            ce_type=f"com.tierstream.{event.type}.v1",
            ce_time=event.occurred_at,
        )


@given(st.text(min_size=1, max_size=256))
def test_ce_source_is_always_a_uri_reference_that_decodes_to_the_source(source: str) -> None:
    [value] = [
        v
        for k, v in cloudevent_headers(ce_id="i", ce_source=source, ce_type="t", ce_time=AT)
        if k == "ce_source"
    ]
    text = value.decode("ascii")  # percent-encoded: ASCII only
    assert URI_REFERENCE.fullmatch(text), text
    assert unquote(text, errors="strict") == source


def test_plain_source_names_are_left_as_they_are() -> None:
    for source in ("shop", "tierstream/scorer", "urn:acme:orders", "https://acme.example/crm"):
        assert uri_reference(source) == source
    assert uri_reference("order system 50%") == "order%20system%2050%25"
