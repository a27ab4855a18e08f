"""What a webhook subscription can receive: a feed is one stream, filtered by topic.

Interest signals are the only feed today. Anomalies (or any other stored event a CRM should
hear about) become a second `Feed` here — its stream, its topic filter — plus a read grant on
that stream in the `webhooks` role (`engine.credentials.ROLES`); the service, the signing and
the retries need no change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nerve_client.subjects import SIGNALS, signal_filter


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
}
DEFAULT_FEED = "signals"
