"""The recommender's working set: each user's profile as the service folds it, and the newest
stored list per slot, loaded on first sight and kept in an LRU cache."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import orjson

from engine.bus import Bus
from engine.profiles.store import ProfileStore, blank
from engine.recommender.lists import Last, UserState, signature
from engine.subjects import RECOMMENDATIONS, reco_subject


class WorkingSet:
    """Users by subject token; `states` loads what is missing (stored profile, stored lists)."""

    def __init__(self, bus: Bus, store: ProfileStore, slots: list[str], cache_size: int) -> None:
        self.bus = bus
        self.store = store
        self.slots = slots
        self.cache_size = cache_size
        self._cache: OrderedDict[str, UserState] = OrderedDict()

    def forget(self, token: str) -> None:
        self._cache.pop(token, None)

    async def states(self, tokens: list[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        missing = []
        for t in tokens:
            st = self._cache.get(t)
            if st is None:
                missing.append(t)
            else:
                self._cache.move_to_end(t)
                out[t] = st
        if missing:
            out.update(await self._load(missing))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    async def _load(self, missing: list[str]) -> dict[str, UserState]:
        """First sight of users: their stored profiles and each slot's newest stored list."""
        slots = await self.store.load(missing, create_keys=False)
        names = list(self.slots)
        lasts = await asyncio.gather(*(self.read_last(t, slot) for t in missing for slot in names))
        out: dict[str, UserState] = {}
        for i, t in enumerate(missing):
            slot = slots.get(t)
            profile = slot.profile if slot is not None and slot.profile else blank(t)
            last = dict(zip(names, lasts[i * len(names) : (i + 1) * len(names)], strict=True))
            st = self._cache.get(t)  # loaded meanwhile by a request
            if st is None:
                st = self._cache[t] = UserState(t, profile, last)
            out[t] = st
        return out

    async def read_last(self, token: str, slot: str) -> Last:
        found = await self.bus.last(RECOMMENDATIONS, reco_subject(token, slot))
        if found is None:
            return Last()
        seq, data = found
        try:
            event = orjson.loads(data)
            return Last(seq, signature(event), event)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return Last(seq)
