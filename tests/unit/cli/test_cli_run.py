"""`tierstream run`'s banner shows the key the services accept."""

from __future__ import annotations

import pytest

from cli.run import api_key_for, first_api_key


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


@pytest.mark.parametrize(
    ("env", "ingest", "scorer"),
    [
        ({"TIERSTREAM_API_KEYS": "demo:k"}, "k", "k"),
        # Before, the demo sent the shared key, which an ingest with keys of its own refused.
        ({"TIERSTREAM_API_KEYS": "demo:k", "INGEST_API_KEYS": "shop:i1,shop:i2"}, "i1", "k"),
        ({"TIERSTREAM_API_KEYS": "demo:k", "INGEST_API_KEYS": ""}, "", "k"),  # as ingest reads
    ],
)
def test_each_service_is_given_a_key_it_accepts(
    env: dict[str, str], ingest: str, scorer: str
) -> None:
    assert (api_key_for(env, "ingest"), api_key_for(env, "scorer")) == (ingest, scorer)
