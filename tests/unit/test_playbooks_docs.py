"""docs/PLAYBOOKS.md, the playbook format's reference, keeps up with the code: every name a
template can use, every channel, priority and cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.contracts import ChangeCause
from shared.domain.playbook_model import Channel, Priority
from shared.domain.playbook_templates import CHANGE_NAMES, SCOPE_NAMES

DOC = (Path(__file__).resolve().parents[2] / "docs/PLAYBOOKS.md").read_text()


@pytest.mark.parametrize(
    "name",
    sorted(
        {*CHANGE_NAMES, *(n for names in SCOPE_NAMES.values() for n in names),
         *Channel, *Priority, *ChangeCause}
    ),
)  # fmt: skip
def test_every_name_and_value_is_documented(name: str) -> None:
    assert f"`{name}`" in DOC
