"""Login stitching: a visitor's anonymous history becomes part of the profile it logs in to.

What a profile holds (and a replay reproduces): a user U's profile folds U's own events and every
event of each anonymous id A whose history went to U, with one exception: A's `consent_updated`
events count as history but never change U's consent (a banner choice made as a visitor does
not widen what the customer agreed to).

How, in the projection itself (`fold`, used by the profiles service, the replay and the
recommender's working set): when U's `user_identified` naming A is folded and A's history went to
nobody yet, A's profile as it then stands is merged into U's (`merge`: counts add, first/last
are min/max, bounded lists keep the top N, stream positions are united, so a redelivered event
of A is still skipped); U lists A in `stitched` and A records U in `identified_as`. From then on
every event of A is folded into A and into U (forwarded). So each event of A reaches U exactly
once, by the merge or forwarded, in whichever order the two profiles meet it, and a second
login from the same browser merges nothing again.

Not stitched, only linked (`anonymous_ids`, which erasure follows): an anonymous id whose history
already went to another user (a shared device without logout: first login wins), and one whose
latest consent refused personalisation at the login (its history was not meant to personalise).
"""

from __future__ import annotations

import copy
from collections.abc import Container
from typing import Any

from engine.profiles.profile import (
    MAX_ANONYMOUS_IDS,
    RECENT_IMPRESSIONS,
    RECENT_ITEMS,
    already_applied,
    apply,
    new_profile,
)
from nerve_client.subjects import ANON_PREFIX, decode_token, user_token


def blank(token: str) -> dict[str, Any]:
    """The empty profile of a user not stored yet, by subject token."""
    user_id, anonymous_id = decode_token(token)
    return new_profile(token, user_id, anonymous_id)


def linked_anonymous(event: dict[str, Any]) -> str | None:
    """The token of the anonymous id a `user_identified` event links (None for other events)."""
    anon = event.get("anonymous_id")
    if event.get("type") != "user_identified" or not isinstance(anon, str) or not anon:
        return None
    return user_token(None, anon)


def owner(profile: dict[str, Any]) -> str | None:
    """The token of the user whose profile also folds this anonymous profile's events."""
    uid = profile.get("identified_as")
    if not profile["key"].startswith(ANON_PREFIX) or not isinstance(uid, str) or not uid:
        return None
    return user_token(uid, None)


def needs(token: str, event: dict[str, Any]) -> list[str]:
    """The profiles `fold` reads for one event, known before loading any: its own and the
    anonymous id it links. The owner of an anonymous profile (`owner`) is needed too."""
    anon = linked_anonymous(event)
    return [token] if anon is None or anon == token else [token, anon]


def fold(
    profiles: dict[str, dict[str, Any]],
    token: str,
    event: dict[str, Any],
    stream: str,
    seq: int,
    *,
    skip: Container[str] = (),
) -> list[str]:
    """Fold one event of `token` into its profile and into the profiles a login links it to;
    returns the tokens whose profile changed. Missing profiles of `needs` are created blank; an
    anonymous profile's owner is forwarded to only when present in `profiles`. Tokens in `skip`
    (erased users) are neither stitched nor forwarded to. Raises `CannotApply` unchanged."""
    own = profiles.get(token)
    if own is None:
        own = profiles[token] = blank(token)
    changed = [token] if apply(own, event, stream, seq) else []
    anon = linked_anonymous(event)
    if anon is not None and anon != token and anon not in skip:
        other = profiles.get(anon)
        if other is None:
            other = profiles[anon] = blank(anon)
        if stitch(own, other):
            changed += [t for t in (token, anon) if t not in changed]
    target = owner(own)
    if target is None or target == token or target in skip or target not in profiles:
        return changed
    if apply(profiles[target], event, stream, seq, consent=False):
        changed.append(target)
    return changed


def stitch(user: dict[str, Any], anon: dict[str, Any]) -> bool:
    """Merge `anon`'s history into `user` if it went to nobody yet (see the module docstring);
    True if either profile changed. Idempotent: a stitched id is never merged twice."""
    uid, aid = user.get("user_id"), anon.get("anonymous_id")
    if not uid or not aid or user["key"].startswith(ANON_PREFIX):
        return False
    stitched = user.setdefault("stitched", [])
    went_to = anon.get("identified_as")
    if aid in stitched:  # merged before; a lost write may have left the visitor's mark unset
        if went_to is None:
            anon["identified_as"] = uid
            return True
        return False
    if went_to not in (None, uid) or len(stitched) >= MAX_ANONYMOUS_IDS:
        return False
    if (anon.get("consent") or {}).get("personalization") is False:
        return False
    # Marked for this user but not merged here: this profile's write was lost to a concurrent
    # writer. Merge unless that writer already forwarded an event of the visitor here.
    if went_to is None or not _overlaps(user, anon):
        merge(user, anon)
    stitched.append(aid)
    stitched.sort()
    anon["identified_as"] = uid
    return True


def merge(into: dict[str, Any], src: dict[str, Any]) -> None:
    """Add the history of `src` to `into`: the same result as folding `src`'s events into
    `into` (they are disjoint), its consent aside."""
    src = copy.deepcopy(src)
    for name in ("counts", "categories"):
        target = into[name]
        for k, n in src[name].items():
            target[k] = target.get(k, 0) + n
    seen = [t for t in (into["first_seen"], src["first_seen"]) if t is not None]
    into["first_seen"] = min(seen, default=None)
    seen = [t for t in (into["last_seen"], src["last_seen"]) if t is not None]
    into["last_seen"] = max(seen, default=None)
    recent = into["recent_items"] + src["recent_items"]
    recent.sort(key=lambda r: (r["time"], r["seq"]), reverse=True)
    into["recent_items"] = recent[:RECENT_ITEMS]
    _merge_held(into["held"], src["held"])
    _merge_simulators(into["simulators"], src["simulators"])
    _merge_offers(into["offers"], src["offers"])
    _merge_crm(into["crm"], src["crm"])
    _merge_positions(into["positions"], src["positions"])


def _overlaps(user: dict[str, Any], anon: dict[str, Any]) -> bool:
    """Whether `user` already applied an event that `anon` applied above its floor."""
    return any(
        already_applied(user, stream, s)
        for stream, pos in anon["positions"].items()
        for s in pos["applied"]
    )


def _merge_held(into: dict[str, Any], src: dict[str, Any]) -> None:
    for item, held in src.items():
        mine = into.get(item)
        if mine is None:
            into[item] = held
            continue
        if held["since"] < mine["since"]:
            mine["source"] = held["source"]
        mine["since"] = min(mine["since"], held["since"])
        mine["value"] = max(mine["value"], held["value"])


def _merge_simulators(into: dict[str, Any], src: dict[str, Any]) -> None:
    for name, use in src.items():
        mine = into.get(name)
        if mine is None:
            into[name] = use
            continue
        mine["count"] += use["count"]
        if (use["last_time"], use["last_seq"]) > (mine["last_time"], mine["last_seq"]):
            for k in ("last_time", "last_seq", "last_item", "last_parameters"):
                mine[k] = use[k]


def _merge_offers(into: dict[str, Any], src: dict[str, Any]) -> None:
    for item, stats in src.items():
        mine = into.get(item)
        if mine is None:
            into[item] = stats
            continue
        for k in ("shown", "clicked", "dismissed"):
            mine[k] += stats[k]
        times = sorted(mine["shown_times"] + stats["shown_times"], reverse=True)
        mine["shown_times"] = times[:RECENT_IMPRESSIONS]
        for k in ("last_clicked", "last_dismissed"):
            found = [t for t in (mine[k], stats[k]) if t is not None]
            mine[k] = max(found) if found else None


def _merge_crm(into: dict[str, Any], src: dict[str, Any]) -> None:
    for key, contact in src.items():
        mine = into.get(key)
        if mine is None:
            into[key] = contact
            continue
        contacts = mine["contacts"] + contact["contacts"]
        if (contact["time"], contact["seq"]) > (mine["time"], mine["seq"]):
            mine.update(contact)
        mine["contacts"] = contacts


def _merge_positions(into: dict[str, Any], src: dict[str, Any]) -> None:
    """Unite what both have applied. Taking the higher floor is sound because a floor is the
    consumer's acknowledgement floor: every event at or below it was applied to every profile
    it concerns before it was acknowledged, so the united profile holds them all."""
    for stream, pos in src.items():
        mine = into.get(stream)
        if mine is None:
            into[stream] = pos
            continue
        floor = max(mine["floor"], pos["floor"])
        mine["max"] = max(mine["max"], pos["max"])
        mine["floor"] = floor
        mine["applied"] = sorted({s for s in mine["applied"] + pos["applied"] if s > floor})
