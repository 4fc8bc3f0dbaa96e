"""`tierstream run`'s banner shows the key the services accept."""

from __future__ import annotations

import pytest

from cli.run import first_api_key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("demo:s3cret", "s3cret"),
        ("plain-key", "plain-key"),
        ("demo:abc:def", "abc:def"),  # the source ends at the first ':', the key holds the rest
        (" , shop:k1, other:k2", "k1"),
        (",", ""),
    ],
)
def test_the_banner_key_is_the_first_key_as_the_services_read_it(raw: str, key: str) -> None:
    assert first_api_key(raw) == key
