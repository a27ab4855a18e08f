"""Tombstones: after `nerve forget`, nothing is created under the user's id again.

Erasure removes what is stored; a tombstone keeps it removed. Without one, the next request
for the forgotten user's recommendations (a browser tab still open, a CRM lookup) made the
recommender compute and store a new list under their id seconds after the erasure, and the
next event re-created a profile.

A tombstone is a key of the `tombstones` bucket: HMAC-SHA256 of the subject token under a
random per-installation salt (the bucket's `salt` key, made once by provisioning), so the
bucket lists no user id and cannot be checked against a list of guessed ids without that salt.
The services load every tombstone on start and add new ones when `nerve forget` announces them
(it writes the tombstone before announcing), so the check on the serving path is a set lookup.

Lifting a tombstone (a forgotten customer who signs up again and consents) is not built yet:
it will be an explicit operator command.
"""

from __future__ import annotations

import hashlib
import hmac

from engine.bus import Bus, JetStreamKV
from nerve_client.errors import ConfigError

BUCKET = "tombstones"
_SALT_KEY = "salt"


class Tombstones:
    """The set of forgotten tokens, as keyed hashes."""

    def __init__(self, kv: JetStreamKV, salt: bytes, known: set[str]) -> None:
        self.kv = kv
        self.salt = salt
        self.known = known

    @classmethod
    async def open(cls, bus: Bus) -> Tombstones:
        """The bucket's tombstones (the salt is made on first use)."""
        kv = await bus.kv(BUCKET)
        salt = await kv.get(_SALT_KEY)
        if salt is None:  # provisioning makes it (admin): services cannot write it
            raise ConfigError("the tombstones bucket has no salt: run `nerve init`")
        known = {k for k in await kv.keys() if k != _SALT_KEY}
        return cls(kv, salt, known)

    def key(self, token: str) -> str:
        return hmac.new(self.salt, token.encode(), hashlib.sha256).hexdigest()

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self.key(token) in self.known

    def note(self, token: str) -> None:
        """Remember a tombstone written elsewhere (the forget announcement)."""
        self.known.add(self.key(token))

    async def add(self, token: str) -> None:
        """Write the tombstone of `token` (idempotent)."""
        key = self.key(token)
        await self.kv.put(key, b"1")
        self.known.add(key)
