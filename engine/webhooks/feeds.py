"""What a webhook subscription can receive: a feed is one stream, filtered by topic.

Two feeds: interest signals (topic: a signal topic) and anomalies (topic: a detector name).
Another stored event a CRM should hear about becomes one more `Feed` here — its stream, its
topic filter — plus a read grant on that stream in the `webhooks` role
(`engine.credentials.ROLES`); the service, the signing and the retries need no change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nerve_client.subjects import ANOMALIES, SIGNALS, anomaly_filter, signal_filter


@dataclass(frozen=True)
class Feed:
    """A stream whose messages (event JSON with an `id`) can be delivered to webhooks."""

    name: str
    stream: str
    filter: Callable[[str | None], str]
    """The subject filter of a topic (None: every topic)."""
    event: str
    """What the receiver gets, for `nerve webhooks list` and the docs."""


FEEDS: dict[str, Feed] = {
    "signals": Feed("signals", SIGNALS, signal_filter, "interest_signal"),
    "anomalies": Feed("anomalies", ANOMALIES, anomaly_filter, "anomaly_detected"),
}
DEFAULT_FEED = "signals"
