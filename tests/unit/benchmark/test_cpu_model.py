"""`python -m bench.cpu_model` runs the scorer's real decode, fold and evaluation."""

from __future__ import annotations

from bench.cpu_model import NOW, _apply, _records, run
from bench.events import first_purchases, returning_customers
from services.scorer.evaluation import CustomerRecord, Scoring
from shared.domain.rules import default_rules_path, load_rules


def test_a_mixed_batch_updates_each_customer_once_and_classifies_the_new_ones() -> None:
    scoring = Scoring(load_rules(default_rules_path()))
    by_id: dict[str, CustomerRecord] = {}
    _apply(_records(first_purchases("p", 30, at=NOW)), by_id, scoring, NOW)
    mixed = first_purchases("n", 5, at=NOW) + returning_customers(
        "p", 30, 20, at=NOW, seed=1, event_prefix="x"
    )
    rows = _apply(_records(mixed), by_id, scoring, NOW)
    customers = {str(event["customer_id"]) for event in mixed}
    # One customer row each, three first tier changes for each new customer (and a
    # lifecycle change for a returning customer's second purchase).
    assert rows >= len(customers) + 3 * 5
    new = [by_id[c] for c in customers if c.startswith("n-")]
    assert len(new) == 5 and all(r.classes is not None and r.version == 1 for r in new)


def test_the_timed_batches_report_cpu_per_event() -> None:
    assert run(population=40, batches=2, batch=20) > 0
