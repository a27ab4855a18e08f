"""User profiles: the projection of ACTIVITY and CRM into the `profiles` bucket."""

from engine.profiles.profile import (
    PROFILE_VERSION,
    CannotApply,
    Profile,
    apply,
    content,
    new_profile,
    settle_floor,
)

__all__ = [
    "PROFILE_VERSION",
    "CannotApply",
    "Profile",
    "apply",
    "content",
    "new_profile",
    "settle_floor",
]
