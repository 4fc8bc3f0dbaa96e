"""Population mode: quintile cut points of the population score R, F and M."""

from __future__ import annotations

from decimal import Decimal
from functools import cache

import pytest

from services.scorer.rebucket import ScoringHolder, score_features
from shared.domain.features import FEATURES, FeatureValue
from shared.domain.population import CutPoints, compute_cut_points, quintile_score
from shared.domain.rules import Rules, default_rules_path, parse_rules, score_inputs, score_rfm


@cache
def population_rules() -> Rules:
    text = default_rules_path().read_text(encoding="utf-8")
    return parse_rules(
        text.replace("mode: thresholds", "mode: population"), source="population.yaml"
    )


def features(**values: FeatureValue) -> dict[str, FeatureValue]:
    return {name: None for name in FEATURES} | values


CUTS = compute_cut_points(
    recency_days=[float(v) for v in range(1, 11)],
    frequency=[0, 0, *range(1, 11)],
    monetary=[float(v * 100) for v in range(1, 11)],
)


def test_cut_points_are_the_quintiles_of_customers_with_something_in_the_window() -> None:
    assert CUTS.recency == pytest.approx((2.8, 4.6, 6.4, 8.2))
    assert CUTS.frequency == pytest.approx((2.8, 4.6, 6.4, 8.2))
    assert CUTS.monetary == pytest.approx((280, 460, 640, 820))


def test_cut_points_are_versioned_by_their_content() -> None:
    again = compute_cut_points(
        [float(v) for v in range(10, 0, -1)], list(range(1, 11)), [v * 100.0 for v in range(1, 11)]
    )
    other = compute_cut_points([1.0, 2.0], [1, 2], [5.0, 6.0])
    assert again.version == CUTS.version
    assert other.version != CUTS.version
    assert len(CUTS.version) == 12


def test_an_empty_or_single_customer_population_still_gives_cut_points() -> None:
    empty = compute_cut_points([], [0, 0], [])
    assert (empty.recency, empty.frequency, empty.monetary) == ((), (), ())
    single = compute_cut_points([3.0], [2], [50.0])
    assert single.frequency == (2.0, 2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("value", "higher", "score"),
    [
        (1.0, True, 1),
        (2.8, True, 2),
        (5.0, True, 3),
        (8.2, True, 5),
        (99.0, True, 5),
        (1.0, False, 5),
        (2.8, False, 5),
        (2.81, False, 4),
        (8.2, False, 2),
        (8.21, False, 1),
    ],
)
def test_a_value_on_a_cut_point_scores_like_a_threshold_band(
    value: float, higher: bool, score: int
) -> None:
    assert quintile_score(value, CUTS.recency, higher_is_better=higher) == score


def test_population_mode_scores_by_quintile_when_cut_points_are_given() -> None:
    customer = features(days_since_last_purchase=3.0, purchases_365d=9, spend_365d=Decimal("300"))
    assert score_rfm(customer, population_rules(), cut_points=CUTS) == (4, 5, 2)


def test_population_mode_falls_back_to_the_bands_without_cut_points() -> None:
    customer = features(days_since_last_purchase=3.0, purchases_365d=9, spend_365d=Decimal("300"))
    assert score_rfm(customer, population_rules()) == (5, 3, 2)
    empty = CutPoints(version="e", recency=(), frequency=(), monetary=())
    assert score_rfm(customer, population_rules(), cut_points=empty) == (5, 3, 2)


def test_nothing_in_the_window_scores_zero_in_population_mode() -> None:
    customer = features(days_since_last_purchase=None, purchases_365d=0, spend_365d=Decimal(0))
    assert score_rfm(customer, population_rules(), cut_points=CUTS) == (0, 0, 0)


def test_threshold_mode_ignores_cut_points() -> None:
    text = default_rules_path().read_text(encoding="utf-8")
    rules = parse_rules(text, source="t")
    customer = features(days_since_last_purchase=3.0, purchases_365d=9, spend_365d=Decimal("300"))
    assert score_rfm(customer, rules, cut_points=CUTS) == (5, 3, 2)


def test_score_inputs_are_the_features_the_scores_read() -> None:
    customer = features(days_since_last_purchase=3.5, purchases_365d=9, spend_365d=Decimal("300.5"))
    assert score_inputs(customer, population_rules()) == (3.5, 9.0, 300.5)
    assert score_inputs(features(purchases_365d=0, spend_365d=Decimal(0)), population_rules()) == (
        None,
        0.0,
        0.0,
    )


def test_cut_points_of_other_features_than_the_rules_are_not_used() -> None:
    # Stored before the rules file changed its R/F/M features: quintiles of other values.
    rules = population_rules()
    mine = score_features(rules)
    other = (mine[0], mine[1], "lifetime_orders")
    values = ([float(v) for v in range(1, 11)], list(range(1, 11)), [float(v) for v in range(10)])
    fitting = compute_cut_points(*values, features=mine)
    foreign = compute_cut_points(*values, features=other)
    assert fitting.version != foreign.version != compute_cut_points(*values).version
    holder = ScoringHolder(rules)
    for offered, used in [(fitting, fitting), (foreign, None), (CUTS, CUTS)]:  # CUTS: unknown
        holder.use(offered)
        assert holder().cut_points == used
