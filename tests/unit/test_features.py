"""The feature catalogue and the values computed for it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.contracts import CustomerLoggedIn, PurchaseMade
from shared.domain.features import FEATURES, SCORE_FEATURES, compute_features, features_to_json
from shared.domain.state import fold, new_state

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def buy(event_id: str, age: timedelta, amount: str) -> PurchaseMade:
    return PurchaseMade(
        event_id=event_id,
        customer_id="c",
        occurred_at=NOW - age,
        order_id=event_id,
        amount=Decimal(amount),
        currency="EUR",
    )


def test_every_computed_feature_is_in_the_catalogue_and_only_scores_are_left_to_the_rules() -> None:
    computed = compute_features(new_state("c"), now=NOW)
    assert set(computed) == set(FEATURES) - set(SCORE_FEATURES)
    assert all(description.endswith(".") for description in FEATURES.values())


def test_refund_handling_is_documented_on_the_spend_features() -> None:
    for name in ("spend_30d", "spend_90d", "spend_365d", "lifetime_spend"):
        assert "refunds" in FEATURES[name]


def test_a_refund_counts_in_the_windows_of_its_own_date() -> None:
    state = new_state("c")
    fold(state, buy("old", timedelta(days=400), "10000"), now=NOW)
    fold(state, buy("recent", timedelta(days=10), "6000"), now=NOW)
    refund = buy("r", timedelta(days=1), "10000").model_copy(update={"refund_of": "old"})
    fold(state, refund, now=NOW)
    features = compute_features(state, now=NOW)
    assert features["spend_365d"] == Decimal("-4000")  # as documented: period accounting
    assert features["lifetime_spend"] == Decimal("6000")
    assert features["purchases_365d"] == 1


def test_days_since_is_the_exact_fractional_age() -> None:
    state = new_state("c")
    fold(state, buy("p", timedelta(days=2, hours=6), "1"), now=NOW)
    login = CustomerLoggedIn(
        event_id="l", customer_id="c", occurred_at=NOW - timedelta(seconds=1), channel="web"
    )
    fold(state, login, now=NOW)
    features = compute_features(state, now=NOW)
    assert features["days_since_last_purchase"] == 2.25
    assert features["days_since_last_login"] == 1 / 86_400
    assert features["tenure_days"] == 2.25


def test_average_order_value_is_exact_to_six_decimals() -> None:
    state = new_state("c")
    for index, amount in enumerate(["10.00", "10.00", "10.01"]):
        fold(state, buy(f"p{index}", timedelta(days=index), amount), now=NOW)
    features = compute_features(state, now=NOW)
    assert features["avg_order_value"] == Decimal("10.003333")
    assert features["lifetime_spend"] == Decimal("30.01")


def test_features_serialise_to_plain_json_numbers() -> None:
    state = new_state("c")
    fold(state, buy("p", timedelta(days=1), "12.34"), now=NOW)
    as_json = features_to_json(compute_features(state, now=NOW))
    assert as_json["spend_30d"] == 12.34
    assert as_json["has_purchased"] is True
    assert as_json["latest_nps"] is None
    assert json.loads(json.dumps(as_json)) == as_json
