"""Reading a profile: the function behind `nerve profile` and `GET /v1/profiles/{user}`."""

from __future__ import annotations

from engine.profiles.profile import Profile
from engine.profiles.store import ProfileStore
from nerve_client.subjects import user_token


async def read_profile(
    store: ProfileStore, user: str, *, anonymous: bool = False
) -> Profile | None:
    """The stored profile of a user id (or anonymous id), validated; None if there is none."""
    token = user_token(None, user) if anonymous else user_token(user, None)
    found = await store.read(token)
    return Profile.model_validate(found) if found else None
