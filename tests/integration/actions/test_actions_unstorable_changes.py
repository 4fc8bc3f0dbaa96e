"""A tier change that decodes but could never be stored is poison: inside the batch's
transaction it would fail on every retry and stall its partition for ever."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from services.actions.batch import apply_batch
from services.actions.db import Pool, create_pool
from services.actions.decoding import decode
from shared.contracts import TierChanged
from shared.domain.playbooks import default_playbooks_path, load_playbooks
from shared.topics import Topics
from tests.integration.actions.seeding import LOG_ONLY
from tests.integration.actions.support import NOW, fetch, tier_change

BOOKS = load_playbooks(default_playbooks_path())
TOPICS = Topics("unstorable")
# The latest decision whose task (due in 2 days) and vip_welcome steps (at 0 and 7 days) fit.
LAST_DECISION = datetime(9999, 12, 24, tzinfo=UTC)


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=2, application_name="test")
    yield pool
    await pool.close()


def _record(change: TierChanged) -> SimpleNamespace:
    return SimpleNamespace(topic=TOPICS.tier_changed, partition=0, offset=0, value=change.to_json(),
                           key=change.customer_id.encode(), headers=[])  # fmt: skip


@pytest.mark.parametrize(
    ("unstorable", "error"),
    [
        ({"id": "x" * 6000}, "id: String should have at most 128 characters"),
        ({"emitted_at": datetime(9999, 12, 30, tzinfo=UTC)},
         "ValueError: the task of playbook gold_upgrade would fall due outside years 1-9999"
         " in UTC"),
        ({"emitted_at": datetime(9999, 12, 25, tzinfo=UTC)},
         "ValueError: step check_in of sequence vip_welcome would fall due outside years 1-9999"
         " in UTC"),
    ],
    ids=["long_id", "task_due_after_9999", "step_due_after_9999"],
)  # fmt: skip
async def test_a_change_that_could_never_be_stored_is_poison_and_the_rest_of_its_batch_applies(
    pool: Pool, actions_db: str, unstorable: dict[str, Any], error: str
) -> None:
    bad = tier_change("bad", "c1", "value_tier", "silver", "gold").model_copy(update=unstorable)
    last = tier_change("last", "c2", "value_tier", "silver", "gold", at=LAST_DECISION)
    decoded = decode([_record(bad), _record(last)], TOPICS, BOOKS)
    assert [p.error for p in decoded.poison] == [error]
    # What decoding accepted commits, up to the calendar's last day.
    await apply_batch(pool, decoded.changes, [], [], group_id="g", playbooks=BOOKS,
                      channels=LOG_ONLY, now=NOW)  # fmt: skip
    tasks = await fetch(actions_db, "SELECT tier_change_id, due_at FROM actions.task")
    assert tasks == [{"tier_change_id": "last", "due_at": datetime(9999, 12, 26, tzinfo=UTC)}]
    steps = await fetch(actions_db, "SELECT max(due_at) AS due_at FROM actions.delivery"
                        " WHERE kind = 'step'")  # fmt: skip
    assert steps == [{"due_at": datetime(9999, 12, 31, tzinfo=UTC)}]
