"""The simulator is a pure function of its arguments, and its population looks like one."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from typer.testing import CliRunner

from cli.main import app
from cli.simulation import (
    ARCHETYPES,
    REGULAR,
    basket_amount,
    pick_archetype,
    plan_phases,
    poisson_times,
    simulate_population,
)
from shared.contracts import customer_event_adapter

END = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_same_seed_gives_identical_events_including_ids() -> None:
    first = simulate_population(seed=7, customers=60, days=200, end=END)
    second = simulate_population(seed=7, customers=60, days=200, end=END)
    assert first.events == second.events
    assert first.archetypes == second.archetypes


def test_another_seed_gives_other_customers_and_events() -> None:
    a = simulate_population(seed=7, customers=60, days=200, end=END)
    b = simulate_population(seed=8, customers=60, days=200, end=END)
    assert {e["event_id"] for e in a.events}.isdisjoint(e["event_id"] for e in b.events)
    assert [e["occurred_at"] for e in a.events] != [e["occurred_at"] for e in b.events]


def test_a_customer_does_not_depend_on_the_population_size() -> None:
    small = simulate_population(seed=3, customers=5, days=100, end=END, prefix="p-")
    large = simulate_population(seed=3, customers=50, days=100, end=END, prefix="p-")
    mine = [e for e in large.events if e["customer_id"] == "p-00002"]
    theirs = [e for e in small.events if e["customer_id"] == "p-00002"]
    assert [e["occurred_at"] for e in mine] == [e["occurred_at"] for e in theirs]


def test_every_event_is_a_valid_contract_inside_the_period_and_time_ordered() -> None:
    population = simulate_population(seed=1, customers=80, days=120, end=END)
    start = END - timedelta(days=120)
    times = []
    for raw in population.events:
        event = customer_event_adapter.validate_python(raw)
        assert start <= event.occurred_at <= END
        times.append(event.occurred_at)
    assert times == sorted(times)
    ids = [e["event_id"] for e in population.events]
    assert len(ids) == len(set(ids))


def test_archetype_shares_follow_their_weights() -> None:
    rng = random.Random(0)
    drawn = Counter(pick_archetype(rng).name for _ in range(20_000))
    for archetype in ARCHETYPES:
        assert abs(drawn[archetype.name] / 20_000 - archetype.share) < 0.015, archetype.name


def test_archetypes_behave_as_named() -> None:
    population = simulate_population(seed=11, customers=400, days=400, end=END)
    purchases = Counter(e["customer_id"] for e in population.events if e["type"] == "purchase")
    spend: dict[str, Decimal] = {}
    for e in population.events:
        if e["type"] == "purchase":
            spend[e["customer_id"]] = spend.get(e["customer_id"], Decimal(0)) + Decimal(e["amount"])
    kinds: dict[str, list[str]] = {}
    for cid, name in population.archetypes.items():
        kinds.setdefault(name, []).append(cid)
    assert all(purchases[c] == 0 for c in kinds["browser"])
    assert all(purchases[c] == 1 for c in kinds["one_off"])
    whales = statistics.mean(spend.get(c, Decimal(0)) for c in kinds["whale"])
    regulars = statistics.mean(spend.get(c, Decimal(0)) for c in kinds["regular"])
    assert whales > 5 * regulars


def test_churners_go_silent_and_returners_come_back() -> None:
    rng = random.Random(5)
    churner = next(a for a in ARCHETYPES if a.name == "churner")
    returner = next(a for a in ARCHETYPES if a.name == "returner")
    for _ in range(200):
        (only,) = plan_phases(churner, rng, 400)
        assert only.end <= 400 - 0.55 * (400 - only.start) + 1e-9
        before, after = plan_phases(returner, rng, 400)
        assert after.end == 400 and 3 <= 400 - after.start <= 40
        assert after.start - before.end >= 100 or before.end == before.start


def test_baskets_are_log_normal_around_the_median() -> None:
    rng = random.Random(2)
    amounts = [float(basket_amount(rng, REGULAR)) for _ in range(5000)]
    assert abs(statistics.median(amounts) - REGULAR.basket_median) < 5
    assert statistics.mean(amounts) > statistics.median(amounts)  # right-skewed
    assert min(amounts) >= 1.0


def test_poisson_arrivals_match_their_rate() -> None:
    rng = random.Random(9)
    counts = [len(poisson_times(rng, 0, 100, 0.5)) for _ in range(400)]
    assert abs(statistics.mean(counts) - 50) < 2
    assert poisson_times(rng, 0, 100, 0) == []


def test_a_run_ending_at_another_time_makes_other_customers_not_a_second_history() -> None:
    first = simulate_population(seed=7, customers=20, days=100, end=END)
    later = simulate_population(seed=7, customers=20, days=100, end=END + timedelta(hours=1))
    assert set(first.archetypes).isdisjoint(later.archetypes)
    assert {e["customer_id"] for e in first.events}.isdisjoint(
        e["customer_id"] for e in later.events
    )
    assert all(c.startswith(first.prefix) for c in first.archetypes)
    assert first.prefix.startswith("sim7-")


def test_a_fixed_prefix_keeps_the_customers_whatever_the_end() -> None:
    first = simulate_population(seed=7, customers=20, days=100, end=END, prefix="p-")
    later = simulate_population(
        seed=7, customers=20, days=100, end=END + timedelta(hours=1), prefix="p-"
    )
    assert set(first.archetypes) == set(later.archetypes)
    assert {e["event_id"] for e in first.events}.isdisjoint(e["event_id"] for e in later.events)


def test_a_fixed_now_too_early_for_the_history_is_a_configuration_error() -> None:
    # An OverflowError traceback half-way through generating the population.
    result = CliRunner().invoke(app, ["simulate", "--dry-run", "--customers", "2"],
                                env={"TIERSTREAM_NOW": "0001-01-02T00:00:00Z"})  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "leaves no room for 365 days of history" in result.output
    assert "Traceback" not in result.output
