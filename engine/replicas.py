"""Which replica owns a user under a fixed split: `--replicas N --replica i` (anomalies).

Replica `i` of `N` owns the users whose subject token hashes to `i` (CRC-32 mod N). Every
replica still reads every event. The recommender and the signals service no longer use it:
they share the broker's partitions through leases (`engine.partitions`), which needs no fixed
N and moves a dead replica's users to the others.
"""

from __future__ import annotations

import zlib


def owner(token: str, replicas: int) -> int:
    """The replica that owns a user: CRC-32 of the token modulo the number of replicas."""
    return zlib.crc32(token.encode()) % replicas if replicas > 1 else 0
