"""What a browser's live stream holds between two reads: the newest list of each slot.

A `recommendations_updated` list supersedes the previous list of its slot, so a browser that
reads slowly (a background tab, a stalled connection) needs only the newest per slot: older
ones would be drawn and at once redrawn. `LatestPerSlot` therefore keeps one list per slot,
replacing an unread one by its successor, and hands them out in the order their newest lists
arrived. Its size is bounded by the number of slots, so nothing else needs dropping.

`StreamLimits` counts the open streams per site key and per client address against their caps
(`GatewaySettings.max_streams_per_key` / `max_streams_per_client`). `EventStream` is the
response a stream is sent as, and `FRAMES` what its OpenAPI says it sends.
"""

from __future__ import annotations

import asyncio

from starlette.responses import StreamingResponse

HEARTBEAT_S = 15.0
"""Seconds without a list after which a stream sends a `: ping` comment (keeps proxies open)."""
FRAMES = (
    "Frames: `: connected` (a comment) once subscribed; then, for each new list of a "
    "requested slot (`slots=home,similar`; none: every slot), `id: <recommendation id>`, "
    "`event: recommendations` and `data: <ServedList JSON>` (the schema of "
    "`GET /v1/recommendations/{user_id}`, `nerve schema served_list`); a `: ping` comment "
    f"after {HEARTBEAT_S:g} s without one. A slow reader gets the newest list of each slot, "
    "not every one."
)
"""What a live stream sends, for its OpenAPI description."""


class EventStream(StreamingResponse):
    """A Server-Sent Events response (`text/event-stream`)."""

    media_type = "text/event-stream"


class LatestPerSlot:
    """The unread lists of one browser, at most one (the newest) per slot."""

    def __init__(self) -> None:
        self._unread: dict[str, bytes] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._unread)

    def put(self, slot: str, data: bytes) -> None:
        """Keep `data` as the newest list of `slot`, dropping the unread one it supersedes."""
        self._unread.pop(slot, None)  # re-inserted last: handed out in order of arrival
        self._unread[slot] = data
        self._ready.set()

    async def get(self) -> bytes:
        """The oldest-arrived unread list (waiting for one); safe to cancel."""
        while not self._unread:
            self._ready.clear()
            await self._ready.wait()
        slot = next(iter(self._unread))
        return self._unread.pop(slot)


class StreamLease:
    """One open stream's place under the caps; `release` gives it back (safe to call twice)."""

    def __init__(self, limits: StreamLimits, key: str, client: str) -> None:
        self._limits, self._key, self._client = limits, key, client
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits.drop(self._key, self._client)


class StreamLimits:
    """How many live streams are open per site key and per client address, with their caps.

    A stream holds a subscription and a task for as long as its browser stays, so without a cap
    one client could open them until the gateway runs out of memory or file descriptors. The
    cap per client address is small (a page needs one stream, a user has a few tabs); the cap
    per key bounds one site's share of the gateway."""

    def __init__(self, per_key: int, per_client: int) -> None:
        self.per_key, self.per_client = per_key, per_client
        self.by_key: dict[str, int] = {}
        self.by_client: dict[str, int] = {}

    def open(self, key: str, client: str) -> StreamLease | None:
        """A lease for one more stream of `key` from `client`, or None when a cap is reached."""
        if self.by_key.get(key, 0) >= self.per_key:
            return None
        if self.by_client.get(client, 0) >= self.per_client:
            return None
        self.by_key[key] = self.by_key.get(key, 0) + 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return StreamLease(self, key, client)

    def drop(self, key: str, client: str) -> None:
        for counts, name in ((self.by_key, key), (self.by_client, client)):
            counts[name] -= 1
            if not counts[name]:
                del counts[name]
