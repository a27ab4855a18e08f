"""What JetStream encodes in reply subjects and stream configs, read in one place."""

from __future__ import annotations

from typing import Any

Batch = list[tuple[int, str, bytes]]
"""Messages as (stream sequence, subject, payload), in stream order."""


def ack_info(reply: str) -> tuple[int, int, int]:
    """(times delivered, stream sequence, messages pending) from a JetStream reply subject."""
    t = reply.split(".")
    if (
        len(t) >= 12
    ):  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<dlv>.<sseq>.<cseq>.<ts>.<pend>
        return int(t[6]), int(t[7]), int(t[10])
    return int(t[4]), int(t[5]), int(t[8])


def consumer_seq(reply: str) -> int:
    """The consumer sequence of a JetStream reply subject (gaps mean lost deliveries)."""
    t = reply.split(".")
    return int(t[8]) if len(t) >= 12 else int(t[6])


def stream_subject(info: Any) -> str:
    """The subject that selects a whole stream: its one subject, else every subject."""
    subjects = info.config.subjects or []
    return str(subjects[0]) if len(subjects) == 1 else ">"
