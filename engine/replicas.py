"""Which replica owns a user: the split shared by the recommender and the signals service.

Replica `i` of `N` owns the users whose subject token hashes to `i` (CRC-32 mod N), so a
user's events are handled by one worker, in log order, and two replicas never publish for the
same user.
"""

from __future__ import annotations

import zlib


def owner(token: str, replicas: int) -> int:
    """The replica that owns a user: CRC-32 of the token modulo the number of replicas."""
    return zlib.crc32(token.encode()) % replicas if replicas > 1 else 0
