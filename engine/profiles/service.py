"""TRANSITION shim (removed at the end of the layout change): moved to engine.services.profiles,
engine.profiles.store.blank and engine.subjects."""

from engine.profiles.profile import CannotApply
from engine.profiles.store import blank
from engine.subjects import SHORT, SubjectError, split_user_subject

SOURCES = tuple(SHORT.items())


def token_of(subject: str) -> str:
    try:
        return split_user_subject(subject)[0]
    except SubjectError as exc:
        raise CannotApply(str(exc)) from None


__all__ = ["SOURCES", "blank", "token_of"]
