"""Reading a profile: the function behind `nerve profile` and `GET /v1/profiles/{user}`."""

from __future__ import annotations

from typing import Any

from engine.bus.kv import JetStreamKV, kv_key
from engine.profiles.profile import Profile
from engine.subjects import user_token


async def read_profile(nc: Any, user: str, *, anonymous: bool = False) -> Profile | None:
    """The stored profile of a user id (or anonymous id), validated; None if there is none."""
    token = user_token(None, user) if anonymous else user_token(user, None)
    kv = await JetStreamKV.open(nc, "profiles")
    raw = await kv.get(kv_key(token))
    return Profile.model_validate_json(raw) if raw else None
