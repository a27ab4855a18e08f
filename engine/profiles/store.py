"""Where profiles live: sealed values under pseudonymous keys (see `keyring`), with revisions
for compare-and-set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from engine.bus.bus import Bus
from engine.bus.kv import JetStreamKV
from engine.profiles.keyring import Keyring, profile_key, seal, unseal
from engine.profiles.stitch import blank

__all__ = ["ProfileStore", "Slot", "blank"]


@dataclass(slots=True)
class Slot:
    """A user's place in the store: the profile (None if new), its revision (0 if new), the
    user's key and the pseudonymous KV key."""

    profile: dict[str, Any] | None
    revision: int
    user_key: bytes
    pkey: str


class ProfileStore:
    """Profiles of a bucket (`profiles`, or a rebuild target) sealed with the users' keys."""

    def __init__(self, kv: JetStreamKV, keyring: Keyring) -> None:
        self.kv = kv
        self.keyring = keyring

    @classmethod
    async def open(
        cls, bus: Bus, bucket: str = "profiles", *, create: bool = False
    ) -> ProfileStore:
        kv = await bus.kv(bucket, create=create)
        return cls(kv, Keyring(await bus.kv("userkeys")))

    def fresh(self) -> ProfileStore:
        """The same buckets with an empty key cache (for one request of a long-lived reader)."""
        return ProfileStore(self.kv, Keyring(self.keyring.kv))

    async def load(self, tokens: Iterable[str], *, create_keys: bool) -> dict[str, Slot]:
        """Slots of `tokens` (users without a key are left out unless `create_keys`)."""
        keys = await self.keyring.keys_of(tokens, create=create_keys)
        pkeys = {t: profile_key(k) for t, k in keys.items()}
        found = await self.kv.entries(list(pkeys.values()))
        out = {}
        for t, k in keys.items():
            entry = found.get(pkeys[t])
            profile = None
            if entry is not None:
                try:
                    profile = orjson.loads(unseal(k, pkeys[t], entry[0]))
                except InvalidTag:
                    raise ValueError(f"profile of {t} does not decrypt with its key") from None
            out[t] = Slot(profile, entry[1] if entry else 0, k, pkeys[t])
        return out

    async def slots(self, tokens: Iterable[str]) -> dict[str, Slot]:
        """Slots to overwrite, without reading the present values (keys created if missing)."""
        keys = await self.keyring.keys_of(tokens, create=True)
        return {t: Slot(None, 0, k, profile_key(k)) for t, k in keys.items()}

    async def write(
        self, items: Sequence[tuple[Slot, dict[str, Any]]], *, compare: bool = True
    ) -> list[int | None]:
        """Store each profile in its slot; with `compare`, only if the slot's revision is still
        the latest (None where it is not)."""
        return await self.kv.write_many(
            [
                (s.pkey, seal(s.user_key, s.pkey, orjson.dumps(p)), s.revision if compare else None)
                for s, p in items
            ]
        )

    async def read(self, token: str) -> dict[str, Any] | None:
        slot = (await self.load([token], create_keys=False)).get(token)
        return slot.profile if slot else None

    async def read_all(self) -> dict[str, dict[str, Any]]:
        """Every stored profile, by token."""
        slots = await self.load(await self.keyring.preload(), create_keys=False)
        return {t: s.profile for t, s in slots.items() if s.profile is not None}

    async def erase(self, token: str) -> int:
        """Erase the profile (its present revisions) and the user's key; returns messages."""
        keys = await self.keyring.keys_of([token], create=False)
        n = 0
        if token in keys:
            n += await self.kv.erase(profile_key(keys[token]))
            n += await self.keyring.destroy(token)
        return n
