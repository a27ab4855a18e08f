"""What a browser's live stream holds between two reads: the newest list of each slot.

A `recommendations_updated` list supersedes the previous list of its slot, so a browser that
reads slowly (a background tab, a stalled connection) needs only the newest per slot: older
ones would be drawn and at once redrawn. `LatestPerSlot` therefore keeps one list per slot,
replacing an unread one by its successor, and hands them out in the order their newest lists
arrived. Its size is bounded by the number of slots, so nothing else needs dropping.
"""

from __future__ import annotations

import asyncio


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
