"""Random (version 4) UUIDs as text, made in bulk.

`str(uuid.uuid4())` costs a system call, a UUID object and its formatting per id (~3.5 µs);
a batch that decides thousands of tier changes takes its randomness in one read instead.
The text is the same canonical form: lower-case hex, version 4, RFC 4122 variant.
"""

from __future__ import annotations

import os

_VARIANT = "89ab"  # the RFC 4122 variant: the first hex digit of the fourth group is 10xx


def uuid4_texts(n: int) -> list[str]:
    """`n` distinct-with-overwhelming-probability random UUIDs, e.g. '0f1c...-4...-a...'."""
    if not n:  # most evaluations decide no change: no system call for them
        return []
    hexes = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        h = hexes[i : i + 32]
        out.append(
            f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
        )
    return out
