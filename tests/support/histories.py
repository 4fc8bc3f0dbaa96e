"""Random customer histories (hypothesis strategies) and their folded states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import strategies as st

from shared.contracts import CustomerLoggedIn, PurchaseMade, SupportAction, SupportTicketUpdated
from shared.domain.state import CustomerState, fold, new_state

NOW = datetime(2025, 1, 1, tzinfo=UTC)
Event = PurchaseMade | CustomerLoggedIn | SupportTicketUpdated
MICROS_PER_DAY = 86_400 * 10**6

# A few shared instants make ties on occurred_at (broken by event_id) likely.
_TIES = [NOW - timedelta(days=d) for d in (0, 7, 30, 90, 365, 400)]
occurred = st.one_of(
    st.sampled_from(_TIES),
    st.integers(-700 * MICROS_PER_DAY, 3 * MICROS_PER_DAY).map(
        lambda us: NOW + timedelta(microseconds=us)
    ),
)
attributes = st.one_of(
    st.none(), st.dictionaries(st.sampled_from(["region", "industry"]), st.sampled_from(["a", "b"]))
)


@st.composite
def events(draw: st.DrawFn, index: int) -> Event:
    common = {
        "event_id": f"e{index}",
        "customer_id": "c",
        "occurred_at": draw(occurred),
        "attributes": draw(attributes),
    }
    kind = draw(st.sampled_from(["purchase", "refund", "login", "support"]))
    if kind in ("purchase", "refund"):
        amount = Decimal(draw(st.integers(0, 10**6))) / 100
        refund_of = "o1" if kind == "refund" else None
        return PurchaseMade(
            **common, order_id=f"o{index}", amount=amount, currency="EUR", refund_of=refund_of
        )
    if kind == "login":
        return CustomerLoggedIn(**common, channel="web")
    return SupportTicketUpdated(
        **common,
        ticket_id=draw(st.sampled_from(["t1", "t2", "t3"])),
        action=draw(st.sampled_from(list(SupportAction))),
        nps=draw(st.none() | st.integers(0, 10)),
        satisfaction=draw(st.none() | st.integers(1, 5)),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    size = draw(st.integers(0, 25))
    return [draw(events(i)) for i in range(size)]


def folded(history: list[Event], now: datetime = NOW) -> CustomerState:
    state = new_state("c")
    for event in history:
        fold(state, event, now=now)
    return state
