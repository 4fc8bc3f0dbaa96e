"""Faults injected into the domain, for tests of how the services isolate them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from unittest.mock import patch

from shared.domain.state import CustomerState, prune


def failing_for(customer_id: str) -> AbstractContextManager[object]:
    """The scorer's evaluation raises for `customer_id` only (as a domain bug would)."""

    def failing(state: CustomerState, *, now: datetime) -> None:
        if state.customer_id == customer_id:
            raise ValueError("a domain bug")
        prune(state, now=now)

    # Where the scorer's evaluation looks it up.
    return patch("services.scorer.evaluation.prune", failing)
