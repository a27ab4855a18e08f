"""Per-user data keys, so a profile can be erased by destroying one key (crypto-shredding).

Why: a KV bucket keeps every revision of a profile as a message, and the revisions the server
drops by its history limit are removed without being overwritten; their bytes stay in the block
files until the block is compacted. Erasing each superseded revision securely costs a disk
rewrite per profile update (measured: it cut the projection to a few hundred events/s). So
instead:

* every user gets a random 256-bit key, stored once in the `userkeys` bucket under the user's
  token (created with compare-and-set, so two replicas agree on one key; never updated, so no
  superseded copy of it ever exists);
* the profile is stored under a pseudonymous key, `p` + HMAC-SHA256(user key, "profile"), so
  neither the user id nor the token appears in the profiles bucket's subjects;
* the profile value is sealed with AES-256-GCM under the user key (the pseudonymous key is the
  associated data, so a value cannot be moved to another key).

`nerve forget` securely erases the one message that holds the key: every revision of the
profile, wherever its bytes still lie, becomes unreadable and unlinkable to the user.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.bus.jsmeta import Batch
from engine.bus.kv import JetStreamKV, kv_key, token_of_key

KEY_BYTES = 32
NONCE_BYTES = 12


def profile_key(user_key: bytes) -> str:
    """The pseudonymous KV key of a user's profile."""
    return "p" + hmac.new(user_key, b"nerve-profile", hashlib.sha256).hexdigest()[:40]


def seal(user_key: bytes, pkey: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(user_key).encrypt(nonce, plaintext, pkey.encode())


def unseal(user_key: bytes, pkey: str, blob: bytes) -> bytes:
    """Decrypt a sealed value; raises `cryptography.exceptions.InvalidTag` if tampered with."""
    return AESGCM(user_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], pkey.encode())


class Keyring:
    """The `userkeys` bucket with an in-memory cache (keys never change, so caching is safe;
    `forget` drops an erased user's key from it)."""

    def __init__(self, kv: JetStreamKV) -> None:
        self.kv = kv
        self._cache: dict[str, bytes] = {}
        self._complete = False  # after preload: a user missing from the cache has no key

    async def keys_of(self, tokens: Iterable[str], *, create: bool) -> dict[str, bytes]:
        """The keys of `tokens`; with `create`, a new key for each user that has none."""
        tokens = list(dict.fromkeys(tokens))
        out = {t: self._cache[t] for t in tokens if t in self._cache}
        missing = [t for t in tokens if t not in out]
        if missing:
            found = {} if self._complete else await self.kv.entries([kv_key(t) for t in missing])
            for t in missing:
                if kv_key(t) in found:
                    out[t] = found[kv_key(t)][0]
            new = [t for t in missing if t not in out] if create else []
            if new:
                fresh = {t: os.urandom(KEY_BYTES) for t in new}
                revs = await self.kv.write_many([(kv_key(t), fresh[t], 0) for t in new])
                lost = [t for t, rev in zip(new, revs, strict=True) if rev is None]
                out.update({t: fresh[t] for t, rev in zip(new, revs, strict=True) if rev})
                if lost:  # another replica created it first: use that one
                    again = await self.kv.entries([kv_key(t) for t in lost])
                    out.update({t: again[kv_key(t)][0] for t in lost if kv_key(t) in again})
        self._cache.update(out)
        return out

    async def preload(self) -> list[str]:
        """Read every key at once (one ordered scan of the bucket's stream, far faster than a
        get per user); returns the tokens that have a key."""
        found: dict[str, bytes] = {}
        prefix = len(self.kv.subject(""))

        def handle(batch: Batch) -> None:
            for _, subject, data in batch:
                if data:  # a delete marker has no value
                    found[token_of_key(subject[prefix:])] = data

        await self.kv.scan(handle)
        self._cache.update(found)
        self._complete = True  # creating with compare-and-set still catches a concurrent writer
        return list(found)

    async def destroy(self, token: str) -> int:
        """Securely erase the user's key; returns how many messages were erased."""
        self._cache.pop(token, None)
        self._complete = False
        return await self.kv.erase(kv_key(token))

    def forget(self, token: str) -> None:
        self._cache.pop(token, None)
        self._complete = False
