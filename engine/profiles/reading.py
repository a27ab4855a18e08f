"""Reading a profile: the function behind `nerve profile` and `GET /v1/profiles/{user}`."""

from __future__ import annotations

from typing import Any

from engine.profiles.profile import Profile
from engine.profiles.store import ProfileStore
from engine.subjects import user_token


async def read_profile(nc: Any, user: str, *, anonymous: bool = False) -> Profile | None:
    """The stored profile of a user id (or anonymous id), validated; None if there is none."""
    token = user_token(None, user) if anonymous else user_token(user, None)
    found = await (await ProfileStore.open(nc)).read(token)
    return Profile.model_validate(found) if found else None
