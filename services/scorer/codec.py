"""JSON on the hot path: orjson where it is exact, the standard library where not.

orjson reads an integer beyond 64 bits as a float and cannot write one; customer
attributes may carry such integers, so those go through `json` instead. Everything
else takes the fast path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson

from shared.domain.state import CustomerState, state_to_record

# orjson turns a larger integer into a float: such a float may have been an integer.
_LOSSY = float(2**63)


def dumps(value: Any) -> str:
    """Compact JSON text: datetimes as ISO 8601 ("Z" for UTC), Decimals as strings."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_UTC_Z).decode()
    except TypeError:  # e.g. an integer orjson cannot represent
        return json.dumps(value, separators=(",", ":"), default=_text)


def dumps_state(state: CustomerState) -> str:
    """`dumps(state_to_record(state))`, several times faster.

    The state's dataclasses are laid out as its JSON (field for key, in order), so orjson
    writes them directly and only Decimals come back to Python (as `str`). An attribute
    integer beyond 64 bits makes orjson refuse; that state takes the exact path.
    """
    try:
        return orjson.dumps(state, default=str, option=orjson.OPT_UTC_Z).decode()
    except TypeError:
        return dumps(state_to_record(state))


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return str(value)


def loads(text: str | bytes, *, user_values: Callable[[Any], Iterable[Any]] = lambda _: ()) -> Any:
    """The value of a JSON text; `user_values(value)` are where unbounded integers may be.

    Only customer attributes can carry integers beyond 64 bits; when one of them came back
    as a big float, the text is read again with the exact (slower) standard parser.
    """
    value = orjson.loads(text)
    if any(isinstance(v, float) and abs(v) >= _LOSSY for v in user_values(value)):
        return json.loads(text)
    return value


def state_attributes(state: dict[str, Any]) -> Iterable[Any]:
    """The attribute values inside a stored customer state."""
    return (stamped["value"] for stamped in state["attributes"].values())
