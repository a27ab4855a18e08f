"""The recommender's working set: each user's profile as the service folds it, and the newest
stored list per slot, loaded on first sight and kept in an LRU cache."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping
from typing import Any

import orjson

from engine.bus import Bus, Refusal, decode
from engine.profiles import stitch
from engine.profiles.profile import CannotApply, apply, settle_floor
from engine.profiles.store import ProfileStore, blank
from engine.recommender.lists import Last, UserState, signature
from nerve_client.subjects import (
    ACTIVITY,
    RECOMMENDATIONS,
    reco_subject,
    user_filters,
    user_token,
)


def profiles_of(states: Mapping[str, UserState]) -> dict[str, dict[str, Any]]:
    """Token -> working profile of `states` (what the projection folds into)."""
    return {t: st.profile for t, st in states.items()}


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
        """The users' states; a user's working profile also holds the history of the visitors
        its logins linked (`engine.profiles.stitch`), merged here if it does not yet."""
        out = await self._states(tokens)
        await self._stitch_pending(out)
        return out

    async def prepare(
        self, grouped: Mapping[str, Iterable[tuple[Any, dict[str, Any], str, int]]]
    ) -> dict[str, UserState]:
        """The states `fold` needs for these events by user, (delivery, event, stream, seq)
        each: the users', the visitors their logins link (caught up with the log first:
        `_catch_up`) and the users that owned visitors logged in as."""
        wanted = {
            t
            for token, events in grouped.items()
            for _, e, _, _ in events
            for t in stitch.needs(token, e)
        }
        out = await self.states(sorted(wanted))
        await self._catch_up(out, grouped)
        owners = {o for st in out.values() if (o := stitch.owner(st.profile)) and o not in out}
        if owners:
            out.update(await self.states(sorted(owners)))
        return out

    async def _catch_up(
        self,
        states: Mapping[str, UserState],
        grouped: Mapping[str, Iterable[tuple[Any, dict[str, Any], str, int]]],
    ) -> None:
        """Fold into each visitor a login links the visitor's own events stored before the
        login. The log is partitioned by user, so a visitor's events and the login that names
        it (the user's subject) reach the service through different partitions, in no order
        between them: without this the login could merge a visitor whose earlier views had not
        arrived yet, and the first list after it would be cold. The events are read from the
        log (the visitor's subjects, up to the login's sequence); `apply` skips what the working
        profile holds, and what arrives later through the visitor's partition is skipped too
        (the merge carries the positions)."""
        for token, events in grouped.items():
            for _, event, stream, seq in events:
                anon = stitch.linked_anonymous(event)
                if anon is None or anon == token or anon not in states or stream != "activity":
                    continue
                profile = states[anon].profile
                for s, subject, data in await self.bus.read_all(
                    ACTIVITY, user_filters(anon)[ACTIVITY]
                ):
                    if s >= seq:
                        break
                    record = decode(ACTIVITY, s, subject, data)
                    if not isinstance(record, Refusal):
                        with contextlib.suppress(CannotApply):
                            apply(profile, record.event, "activity", s)

    def fold(
        self,
        states: dict[str, UserState],
        token: str,
        event: dict[str, Any],
        stream: str,
        seq: int,
        *,
        skip: Container[str] = (),
        profiles: dict[str, dict[str, Any]] | None = None,
    ) -> list[UserState]:
        """Fold one event with the profiles projection, login stitching included, into the
        working profiles of `states` (from `prepare`); returns the states it changed. Raises
        `CannotApply`. `profiles`: `profiles_of(states)`, built once for a batch of events."""
        if profiles is None:
            profiles = profiles_of(states)
        changed = stitch.fold(profiles, token, event, stream, seq, skip=skip)
        for t in changed:
            settle_floor(profiles[t], stream, seq)
        if len(profiles) != len(states):  # blanks made for this event only, as before
            for t in [t for t in profiles if t not in states]:
                del profiles[t]
        return [states[t] for t in changed if t in states]

    async def _stitch_pending(self, states: dict[str, UserState]) -> None:
        pending = {
            t: [user_token(None, a) for a in linked]
            for t, st in states.items()
            if (
                linked := set(st.profile.get("anonymous_ids", []))
                - set(st.profile.get("stitched", []))
            )
        }
        if not pending:
            return
        visitors = await self._states(sorted({a for anons in pending.values() for a in anons}))
        for t, anons in pending.items():
            for a in anons:
                stitch.stitch(states[t].profile, visitors[a].profile)

    async def _states(self, tokens: list[str]) -> dict[str, UserState]:
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
