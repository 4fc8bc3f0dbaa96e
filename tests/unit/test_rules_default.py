"""Every rule of DOMAIN.md's default table, at its boundaries, through the shipped YAML."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache

import pytest

from shared.contracts import (
    CustomerLoggedIn,
    Dimension,
    PurchaseMade,
    SupportAction,
    SupportTicketUpdated,
)
from shared.domain.features import compute_features
from shared.domain.rules import Classification, Rules, classify, default_rules_path, load_rules
from shared.domain.state import attributes_of, fold, new_state

NOW = datetime(2025, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
Event = PurchaseMade | CustomerLoggedIn | SupportTicketUpdated


def d(days: float) -> timedelta:
    return timedelta(days=days)


@cache
def default_rules() -> Rules:
    return load_rules(default_rules_path())


def buy(age: timedelta, amount: str = "10", refund: bool = False) -> Event:
    return PurchaseMade(
        event_id="?",
        customer_id="c",
        occurred_at=NOW - age,
        order_id="o",
        amount=Decimal(amount),
        currency="EUR",
        refund_of="o" if refund else None,
    )


def log_in(age: timedelta) -> Event:
    return CustomerLoggedIn(event_id="?", customer_id="c", occurred_at=NOW - age, channel="app")


def support(age: timedelta, nps: int | None = None) -> Event:
    action = SupportAction.OPENED
    return SupportTicketUpdated(
        event_id="?", customer_id="c", occurred_at=NOW - age, ticket_id="t", action=action, nps=nps
    )


def classified(*events: Event, now: datetime = NOW) -> Classification:
    state = new_state("c")
    for index, event in enumerate(events):
        fold(state, event.model_copy(update={"event_id": f"e{index}"}), now=now)
    return classify(compute_features(state, now=now), attributes_of(state), default_rules())


def buys(count: int, age: timedelta, amount: str = "10") -> list[Event]:
    return [buy(age, amount) for _ in range(count)]


R_CASES = {
    "purchase 29.9 days ago scores R 5": ([buy(d(29.9))], 5),
    "purchase exactly 30 days ago scores R 5": ([buy(d(30))], 5),
    "purchase 30 days and a microsecond ago scores R 4": ([buy(d(30) + US)], 4),
    "purchase 30.1 days ago scores R 4": ([buy(d(30.1))], 4),
    "purchase exactly 90 days ago scores R 4": ([buy(d(90))], 4),
    "purchase 90.1 days ago scores R 3": ([buy(d(90.1))], 3),
    "purchase exactly 180 days ago scores R 3": ([buy(d(180))], 3),
    "purchase 180 days and a microsecond ago scores R 2": ([buy(d(180) + US)], 2),
    "purchase exactly 365 days ago scores R 2": ([buy(d(365))], 2),
    "purchase 365 days and a microsecond ago scores R 1": ([buy(d(365) + US)], 1),
    "purchase five years ago scores R 1": ([buy(d(5 * 365))], 1),
    "never purchased scores R 0": ([log_in(d(1))], 0),
    "a refund alone is no purchase and scores R 0": ([buy(d(1), refund=True)], 0),
    "a later refund does not refresh recency": ([buy(d(100)), buy(d(1), refund=True)], 3),
}


@pytest.mark.parametrize(("events", "score"), R_CASES.values(), ids=R_CASES.keys())
def test_recency_score(events: list[Event], score: int) -> None:
    assert classified(*events).r_score == score


F_CASES = {
    "no purchase scores F 0": ([], 0),
    "a purchase older than 365 days scores F 0": ([buy(d(365) + US)], 0),
    "one purchase exactly 365 days ago scores F 1": ([buy(d(365))], 1),
    "two purchases score F 2": (buys(2, d(1)), 2),
    "four purchases score F 2": (buys(4, d(1)), 2),
    "five purchases score F 3": (buys(5, d(1)), 3),
    "nine purchases score F 3": (buys(9, d(1)), 3),
    "ten purchases score F 4": (buys(10, d(1)), 4),
    "nineteen purchases score F 4": (buys(19, d(1)), 4),
    "twenty purchases score F 5": (buys(20, d(200)), 5),
    "refunds are not purchases for F": ([buy(d(1)), *[buy(d(1), refund=True)] * 3], 1),
}


@pytest.mark.parametrize(("events", "score"), F_CASES.values(), ids=F_CASES.keys())
def test_frequency_score(events: list[Event], score: int) -> None:
    assert classified(*events).f_score == score


M_CASES = {
    "no spend scores M 0": ([], 0),
    "a free order scores M 0": ([buy(d(1), "0")], 0),
    "a cent scores M 1": ([buy(d(1), "0.01")], 1),
    "199.99 scores M 1": ([buy(d(1), "199.99")], 1),
    "200 scores M 2": ([buy(d(1), "200")], 2),
    "999.99 scores M 2": ([buy(d(1), "999.99")], 2),
    "1000 scores M 3": ([buy(d(1), "1000")], 3),
    "4999.99 scores M 3": ([buy(d(1), "4999.99")], 3),
    "5000 scores M 4": ([buy(d(1), "5000")], 4),
    "9999.99 scores M 4": ([buy(d(1), "9999.99")], 4),
    "10000 scores M 5": ([buy(d(1), "10000")], 5),
    "spend older than 365 days scores M 0": ([buy(d(365) + US, "20000")], 0),
    "a refund lowers the spend band": ([buy(d(10), "1000"), buy(d(1), "0.01", refund=True)], 2),
    "a full refund leaves no spend": ([buy(d(10), "50"), buy(d(1), "50", refund=True)], 0),
}


@pytest.mark.parametrize(("events", "score"), M_CASES.values(), ids=M_CASES.keys())
def test_monetary_score(events: list[Event], score: int) -> None:
    assert classified(*events).m_score == score


def gold_history(latest_age: timedelta, count: int = 10, amount: str = "500") -> list[Event]:
    return [*buys(count - 1, d(200), amount), buy(latest_age, amount)]


TIER_CASES = {
    "M 4 and F 4 with a purchase 90 days ago is gold": (gold_history(d(90)), "gold"),
    "gold lapses to silver when the last purchase is 90 days and a microsecond old": (
        gold_history(d(90) + US),
        "silver",
    ),
    "M 3 with F 4 is silver": (gold_history(d(1), amount="499.99"), "silver"),
    "M 4 with F 3 is silver": (gold_history(d(1), count=9, amount="600"), "silver"),
    "M 3 alone is silver": ([buy(d(1), "1000")], "silver"),
    "F 3 alone is silver": (buys(5, d(1), "1"), "silver"),
    "M 2 and F 2 is bronze": (buys(2, d(1), "100"), "bronze"),
    "a purchase long ago is bronze": ([buy(d(3000))], "bronze"),
    "a refunded-only customer has no purchase and no tier": ([buy(d(1), refund=True)], "none"),
    "a customer who only logs in has no tier": ([log_in(d(1))], "none"),
    "an unknown customer has no tier": ([], "none"),
}


@pytest.mark.parametrize(("events", "tier"), TIER_CASES.values(), ids=TIER_CASES.keys())
def test_value_tier(events: list[Event], tier: str) -> None:
    assert classified(*events).value_tier == tier


ACTIVITY_CASES = {
    "a login exactly 7 days ago is active": ([log_in(d(7))], "active"),
    "a login 7 days and a microsecond ago is semi active": ([log_in(d(7) + US)], "semi_active"),
    "a purchase 6.9 days ago is active": ([buy(d(6.9))], "active"),
    "a ticket 2 days ago is active": ([support(d(2))], "active"),
    "a refund yesterday is activity": ([buy(d(1), refund=True)], "active"),
    "an event exactly 30 days ago is semi active": ([support(d(30))], "semi_active"),
    "an event 30.1 days ago is inactive": ([buy(d(30.1))], "inactive"),
    "no events is inactive": ([], "inactive"),
}


@pytest.mark.parametrize(("events", "level"), ACTIVITY_CASES.values(), ids=ACTIVITY_CASES.keys())
def test_activity_level(events: list[Event], level: str) -> None:
    assert classified(*events).activity_level == level


LIFECYCLE_CASES = {
    "no events is a lead": ([], "lead"),
    "a recent login without purchase is a lead": ([log_in(d(30))], "lead"),
    "a recent ticket without purchase is a lead": ([support(d(100))], "lead"),
    "silent for a year exactly is at risk, not churned": ([log_in(d(365))], "at_risk"),
    "silent for a year and a microsecond is churned": ([log_in(d(365) + US)], "churned"),
    "a buyer silent for 400 days is churned": ([buy(d(400)), buy(d(500))], "churned"),
    "one purchase is new": ([buy(d(90))], "new"),
    "no purchase for 90 days and a microsecond is at risk": (
        [buy(d(90) + US), log_in(d(1))],
        "at_risk",
    ),
    "no login for 30 days and a microsecond is at risk": (
        [buy(d(1)), log_in(d(30) + US)],
        "at_risk",
    ),
    "a login exactly 30 days ago is not at risk": ([buy(d(1)), log_in(d(30))], "new"),
    "a detractor NPS of 5 is at risk": ([buy(d(1)), support(d(1), nps=5)], "at_risk"),
    "an NPS of 6 is not at risk": ([buy(d(1)), support(d(1), nps=6)], "new"),
    "a later promoter NPS replaces an earlier detractor": (
        [buy(d(1)), support(d(9), nps=2), support(d(2), nps=9)],
        "new",
    ),
    "a lead with a detractor NPS is at risk": ([support(d(1), nps=0)], "at_risk"),
    "a purchase after more than 90 days' gap is reactivated": (
        [buy(d(30)), buy(d(120) + US)],
        "reactivated",
    ),
    "a gap of exactly 90 days is not reactivated": ([buy(d(30)), buy(d(120))], "established"),
    "reactivated lasts 30 days after the comeback purchase": (
        [buy(d(30) + US), buy(d(200))],
        "established",
    ),
    "two purchases are established": ([buy(d(5)), buy(d(10))], "established"),
    "a refund does not make a second purchase": ([buy(d(5)), buy(d(2), refund=True)], "new"),
}


@pytest.mark.parametrize(("events", "stage"), LIFECYCLE_CASES.values(), ids=LIFECYCLE_CASES.keys())
def test_lifecycle_stage(events: list[Event], stage: str) -> None:
    assert classified(*events).lifecycle_stage == stage


def test_customer_silent_for_31_days_becomes_at_risk() -> None:
    history = [buy(d(2)), log_in(d(1))]
    assert classified(*history).lifecycle_stage == "new"
    assert classified(*history, now=NOW + d(30)).lifecycle_stage == "at_risk"


def test_the_classification_names_the_rule_and_the_values_it_read() -> None:
    result = classified(buy(d(1)), support(d(1), nps=3))
    assert result.matched == {
        Dimension.VALUE_TIER: "bronze",
        Dimension.ACTIVITY_LEVEL: "active",
        Dimension.LIFECYCLE_STAGE: "at_risk",
    }
    assert result.read[Dimension.VALUE_TIER] == {"has_purchased": True}
    assert result.read[Dimension.ACTIVITY_LEVEL] == {"days_since_last_activity": 1.0}
    assert result.read[Dimension.LIFECYCLE_STAGE]["latest_nps"] == 3
    assert result.classes()[Dimension.LIFECYCLE_STAGE] == "at_risk"
    assert result.rules_version == default_rules().version


def test_the_last_rule_of_a_dimension_reads_what_the_rules_before_it_read() -> None:
    # A catch-all decides by every earlier rule's not matching: its change says why (the
    # brief: a change carries the feature values that decided it), not nothing.
    result = classified()
    assert result.matched[Dimension.VALUE_TIER] == "none"
    assert result.read[Dimension.VALUE_TIER] == {
        "m_score": 0, "f_score": 0, "days_since_last_purchase": None, "has_purchased": False,
    }  # fmt: skip
    assert result.matched[Dimension.ACTIVITY_LEVEL] == "inactive"
    assert result.read[Dimension.ACTIVITY_LEVEL] == {"days_since_last_activity": None}
    lapsed = classified(buy(d(45)))
    assert lapsed.read[Dimension.ACTIVITY_LEVEL] == {"days_since_last_activity": 45.0}
