"""shared.ids: random UUID texts in bulk are canonical version-4 UUIDs."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from shared.ids import uuid4_texts


@given(st.integers(min_value=0, max_value=200))
def test_every_text_is_a_canonical_version_4_uuid(n: int) -> None:
    texts = uuid4_texts(n)
    assert len(texts) == n
    for text in texts:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case, dashed: what str(uuid.uuid4()) writes


def test_texts_do_not_repeat() -> None:
    texts = uuid4_texts(50_000) + uuid4_texts(50_000)
    assert len(set(texts)) == len(texts)


def test_all_variant_digits_occur() -> None:
    # The fourth group starts with 8, 9, a or b: each should turn up in a few thousand ids.
    assert {text[19] for text in uuid4_texts(4000)} == set("89ab")
