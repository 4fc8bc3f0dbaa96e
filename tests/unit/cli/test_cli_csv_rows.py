"""CSV rows to events: date formats, column mapping, deterministic ids, precise reasons."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from cli.csv_import import (
    RowError,
    columns_for,
    derive_event_id,
    parse_mapping,
    parse_timestamp,
    row_to_event,
    unused_columns,
)
from cli.importer import MAX_FIELD_CHARS, read_rows

PURCHASE_HEADER = ["customer_id", "occurred_at", "order_id", "amount", "currency"]


def purchase(**cells: str) -> dict[str, str]:
    row = {
        "customer_id": "c1",
        "occurred_at": "2024-03-05",
        "order_id": "o1",
        "amount": "12.50",
        "currency": "EUR",
    }
    return {**row, **cells}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-05", datetime(2024, 3, 5, tzinfo=UTC)),
        ("20240305", datetime(2024, 3, 5, tzinfo=UTC)),
        ("2024/03/05", datetime(2024, 3, 5, tzinfo=UTC)),
        ("2024-03-05T10:15:00Z", datetime(2024, 3, 5, 10, 15, tzinfo=UTC)),
        (
            "2024-03-05T10:15:00+02:00",
            datetime(2024, 3, 5, 10, 15, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("20240305T101500Z", datetime(2024, 3, 5, 10, 15, tzinfo=UTC)),
        (" 2024-03-05 ", datetime(2024, 3, 5, tzinfo=UTC)),
    ],
)
def test_dates_and_timestamps_are_read_with_dates_at_midnight_utc(
    raw: str, expected: datetime
) -> None:
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2024-02-30", "not a valid date"),
        ("20241301", "not a valid date"),
        ("05/03/2024", "not ISO 8601"),
        ("2024-03-05T10:15:00", "no timezone"),
        ("yesterday", "not ISO 8601"),
    ],
)
def test_unreadable_or_ambiguous_dates_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        parse_timestamp(raw)


def test_a_row_becomes_a_validated_event() -> None:
    event = row_to_event("purchase", purchase(), columns_for("purchase", PURCHASE_HEADER, {}))
    assert event.customer_id == "c1"
    assert event.amount == Decimal("12.50")  # type: ignore[union-attr]
    assert event.occurred_at == datetime(2024, 3, 5, tzinfo=UTC)


def test_columns_can_be_mapped_and_attribute_columns_are_collected() -> None:
    mapping = parse_mapping(
        ["customer_id=Kunde", "amount=Total", "attributes.tier=Tier"], "purchase"
    )
    header = ["Kunde", "occurred_at", "order_id", "Total", "currency", "attributes.region", "Tier"]
    row = dict(zip(header, ["k9", "20240101", "o9", "99", "EUR", "north", "A"], strict=True))
    event = row_to_event("purchase", row, columns_for("purchase", header, mapping))
    assert event.customer_id == "k9"
    assert event.amount == Decimal("99")  # type: ignore[union-attr]
    assert event.attributes == {"region": "north", "tier": "A"}


def test_a_mapping_to_an_unknown_field_or_without_equals_is_refused() -> None:
    with pytest.raises(ValueError, match="no field 'amout'"):
        parse_mapping(["amout=Total"], "purchase")
    with pytest.raises(ValueError, match="field=csv_column"):
        parse_mapping(["amount"], "purchase")


def test_a_header_missing_a_required_field_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="amount"):
        columns_for("purchase", ["customer_id", "occurred_at", "order_id", "currency"], {})


@pytest.mark.parametrize(
    "header",
    ["customer_id,occurred_at,channel,customer_id", "customer_id,Kanal,occurred_at,Kanal"],
)
def test_a_header_naming_a_column_twice_is_refused_naming_it(header: str) -> None:
    repeated = "customer_id" if header.count("customer_id") == 2 else "Kanal"
    text = f"{header}\nc1,2024-01-01,web,c2\n"
    with pytest.raises(ValueError, match=f"more than once: '{repeated}'$"):
        read_rows(io.StringIO(text, newline=""), "login", {"channel": "Kanal"})


def test_unnamed_columns_may_repeat() -> None:
    text = "customer_id,occurred_at,channel,,\nc1,2024-01-01,web,,\n"
    _, rows = read_rows(io.StringIO(text, newline=""), "login", {})
    (row,) = rows
    assert row.event is not None and row.event.customer_id == "c1"


def test_unknown_columns_are_listed() -> None:
    assert unused_columns("login", ["customer_id", "occurred_at", "channel", "note"], {}) == [
        "note"
    ]


def test_derived_event_ids_depend_on_content_not_on_its_spelling() -> None:
    columns = columns_for("purchase", PURCHASE_HEADER, {})
    one = row_to_event("purchase", purchase(occurred_at="2024-03-05"), columns)
    same = row_to_event("purchase", purchase(occurred_at="20240305"), columns)
    other = row_to_event("purchase", purchase(amount="13.50"), columns)
    assert one.event_id == same.event_id
    assert one.event_id != other.event_id
    assert one.event_id.startswith("csv-purchase-")


def test_the_type_is_part_of_the_derived_id() -> None:
    payload = {"customer_id": "c1", "occurred_at": "2024-01-01T00:00:00Z"}
    assert derive_event_id("login", payload) != derive_event_id("support", payload)


def test_a_given_event_id_is_kept() -> None:
    header = [*PURCHASE_HEADER, "event_id"]
    event = row_to_event(
        "purchase", purchase(event_id="mine-1"), columns_for("purchase", header, {})
    )
    assert event.event_id == "mine-1"


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"amount": "-3"}, "amount"),
        ({"amount": "lots"}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"customer_id": ""}, "customer_id: Field required"),
        ({"occurred_at": "2024-13-01"}, "occurred_at"),
    ],
)
def test_bad_rows_are_refused_naming_the_field(cells: dict[str, str], reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        row_to_event("purchase", purchase(**cells), columns_for("purchase", PURCHASE_HEADER, {}))


def test_support_rows_parse_numbers() -> None:
    header = ["customer_id", "occurred_at", "ticket_id", "action", "nps"]
    row = dict(zip(header, ["c1", "2024-01-01", "t1", "resolved", "4"], strict=True))
    event = row_to_event("support", row, columns_for("support", header, {}))
    assert event.nps == 4  # type: ignore[union-attr]
    with pytest.raises(RowError, match="nps: Input should be a valid integer"):
        row_to_event("support", {**row, "nps": "4.5"}, columns_for("support", header, {}))


def test_rows_carry_their_starting_line_even_across_blank_and_multiline_records() -> None:
    text = (
        "customer_id,occurred_at,channel,device\n"
        "c1,2024-01-01,web,a\n"
        "\n"
        'c2,2024-01-02,app,"two\nlines"\n'
        "c3,not-a-date,web,b\n"
        "c4,2024-01-03,web\n"
    )
    header, rows = read_rows(io.StringIO(text, newline=""), "login", {})
    parsed = list(rows)
    assert header == ["customer_id", "occurred_at", "channel", "device"]
    assert [r.line for r in parsed] == [2, 4, 6, 7]
    assert [r.event is not None for r in parsed] == [True, True, False, False]
    assert "occurred_at" in parsed[2].reason
    assert parsed[3].reason == "3 fields, the header has 4"


@pytest.mark.parametrize(
    ("amount", "occurred_at"),
    [
        ("1000.00", "2026-11-01"),
        ("1000", "2026-11-01T00:00:00Z"),
        ("1000.0", "2026-11-01T00:00:00+00:00"),
        ("1E3", "2026-11-01T01:00:00+01:00"),
        ("1000.000000", "2026-10-31T19:00:00.000-05:00"),
    ],
)
def test_the_same_row_spelled_differently_gets_the_same_id(amount: str, occurred_at: str) -> None:
    columns = columns_for("purchase", PURCHASE_HEADER, {})
    event = row_to_event("purchase", purchase(amount=amount, occurred_at=occurred_at), columns)
    # the id of the canonical spelling (1000, UTC) is the one earlier versions derived too
    assert event.event_id == "csv-purchase-79813d3418ca821340a292275acff16b"


def test_line_item_prices_are_compared_by_value() -> None:
    header = [*PURCHASE_HEADER, "items"]
    columns = columns_for("purchase", header, {})
    ids = {
        row_to_event("purchase", purchase(items=items), columns).event_id
        for items in (
            '[{"sku": "a", "price": "9.90"}]',
            '[{"sku": "a", "price": 9.9, "quantity": 1}]',
        )
    }
    assert len(ids) == 1


def test_a_cell_over_the_default_128_kib_is_read() -> None:
    note = "x" * 200_000
    text = f"customer_id,occurred_at,channel,attributes.note\nc1,2024-01-01,web,{note}\n"
    _, rows = read_rows(io.StringIO(text, newline=""), "login", {})
    (row,) = rows
    assert row.event is not None and row.event.attributes == {"note": note}


def test_an_unreadable_record_is_refused_naming_its_line() -> None:
    huge = "x" * (MAX_FIELD_CHARS + 1)
    text = f'customer_id,occurred_at,channel\nc1,2024-01-01,web\nc2,2024-01-01,"{huge}"\n'
    _, rows = read_rows(io.StringIO(text, newline=""), "login", {})
    with pytest.raises(ValueError, match=r"^line 3: unreadable CSV \(field larger than"):
        list(rows)


def test_an_unclosed_quote_is_named_in_the_reason() -> None:
    text = 'customer_id,occurred_at,channel\n"c1,2024-01-01,web\nc2,2024-01-02,web\n'
    _, rows = read_rows(io.StringIO(text, newline=""), "login", {})
    (row,) = rows
    assert row.line == 2
    assert (
        row.reason == "1 fields, the header has 3 (the record runs to line 3: an unclosed quote?)"
    )


@pytest.mark.parametrize(
    ("cell", "reason"),
    [("{not json", "items: not valid JSON"), ("[" * 5_000 + "]" * 5_000, "nested too deeply")],
)
def test_an_items_cell_that_cannot_be_read_rejects_its_row_not_the_import(
    cell: str, reason: str
) -> None:
    # 5,000 levels raised RecursionError: a traceback that stopped the whole import.
    header = [*PURCHASE_HEADER, "items"]
    with pytest.raises(RowError, match=reason):
        row_to_event("purchase", purchase(items=cell), columns_for("purchase", header, {}))


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "the file is empty"), ("\n\nc1,2024-01-01,web\n", "line 1 is blank")],
)
def test_a_file_without_a_header_row_is_refused_as_such(text: str, problem: str) -> None:
    # It said "the CSV has no column for: customer_id ...; map one with --column".
    with pytest.raises(ValueError, match=f"^{problem}: no header row") as caught:
        read_rows(io.StringIO(text, newline=""), "login", {})
    assert "e.g. customer_id,occurred_at" in str(caught.value)
    assert "--column" not in str(caught.value)
