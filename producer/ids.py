"""Time-ordered event ids (UUID version 7, RFC 9562).

The millisecond prefix keeps new keys at the right edge of the primary-key
index, which is what keeps inserts cheap as the table grows. Randomness comes
from os.urandom, which stays unique across forked web workers.
"""

from __future__ import annotations

import os

_RAND_BYTES = 10  # 74 of these 80 bits are used
_VERSION_BITS = 0x7 << 76
_VARIANT_BITS = 0b10 << 62
_RAND_A_MASK = 0xFFF
_RAND_B_MASK = (1 << 62) - 1


def uuid7_hex_batch(timestamps_us: list[int]) -> list[str]:
    """One 32-hex-digit UUIDv7 per timestamp (microseconds since the epoch)."""
    entropy = os.urandom(_RAND_BYTES * len(timestamps_us))
    ids = []
    for i, ts_us in enumerate(timestamps_us):
        rand = int.from_bytes(entropy[i * _RAND_BYTES : (i + 1) * _RAND_BYTES], "big")
        value = (
            ((ts_us // 1000) << 80)
            | _VERSION_BITS
            | (((rand >> 62) & _RAND_A_MASK) << 64)
            | _VARIANT_BITS
            | (rand & _RAND_B_MASK)
        )
        ids.append(f"{value:032x}")
    return ids
