"""The user profile and the projection that folds events into it.

The projection is written so that the order in which events are applied does not matter:
counts add up, first/last are min/max, "latest" fields keep the value with the greatest
(time, sequence), bounded lists keep the top N by (time, sequence). Two replicas that apply a
user's events in different orders therefore reach the same profile, and a replay in stream order
reaches the same profile as the live service did.

Deduplication is exact: per stream the profile records `floor` (every event of this user at or
below it is applied: the consumer's acknowledgement floor when the profile was written, since an
event is acknowledged only after its profile is stored) and `applied` (the sequences above the
floor that are applied). An event at or below the floor, or in `applied`, is skipped, so a
redelivery never counts twice, even when replicas apply neighbouring events out of order.

For speed the projection works on plain dicts shaped like `Profile` (JSON in KV); `Profile`
is the schema, used to validate what is read back and to export JSON Schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.profiles.schema import PROFILE_VERSION as PROFILE_VERSION
from engine.profiles.schema import Profile as Profile

RECENT_ITEMS = 20
RECENT_IMPRESSIONS = 20
MAX_ANONYMOUS_IDS = 50
CREDIT_CATEGORIES = frozenset({"loans", "mortgages"})


class CannotApply(ValueError):
    """The event lacks what the projection needs; it goes to DEADLETTER with this reason."""


def new_profile(key: str, user_id: str | None, anonymous_id: str | None) -> dict[str, Any]:
    """An empty profile dict for the user whose subject token is `key`."""
    return {
        "version": PROFILE_VERSION,
        "key": key,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "anonymous_ids": [],
        "stitched": [],
        "identified_as": None,
        "first_seen": None,
        "last_seen": None,
        "counts": {},
        "categories": {},
        "recent_items": [],
        "held": {},
        "simulators": {},
        "offers": {},
        "crm": {},
        "consent": {"time": 0, "seq": 0},
        "positions": {},
    }


def time_ms(value: Any) -> int:
    """Unix ms of an RFC 3339 string (raises `CannotApply` if it is not one)."""
    if not isinstance(value, str):
        raise CannotApply("time: missing or not a string")
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise CannotApply(f"time: not RFC 3339: {value!r}") from None


def already_applied(profile: dict[str, Any], stream: str, seq: int) -> bool:
    pos = profile["positions"].get(stream)
    return pos is not None and (seq <= pos["floor"] or seq in pos["applied"])


def settle_floor(profile: dict[str, Any], stream: str, floor: int) -> None:
    """Raise the stream's floor to the consumer's ack floor and forget sequences below it."""
    pos = profile["positions"].get(stream)
    if pos is None or floor <= pos["floor"]:
        return
    pos["floor"] = floor
    pos["applied"] = [s for s in pos["applied"] if s > floor]


def apply(
    profile: dict[str, Any], event: dict[str, Any], stream: str, seq: int, *, consent: bool = True
) -> bool:
    """Fold one event into the profile; False if it was already applied.

    With `consent=False` (an event of a linked anonymous id, see `stitch`) a `consent_updated`
    counts as history but does not change the profile's consent. Raises `CannotApply` (before
    changing anything) when a field it needs is missing or wrong.
    """
    if already_applied(profile, stream, seq):
        return False
    etype = event.get("type")
    if not isinstance(etype, str):
        raise CannotApply("type: missing")
    t = time_ms(event.get("time"))
    props = event.get("properties") or {}
    if not isinstance(props, dict):
        raise CannotApply("properties: not an object")
    item = event.get("item_id")
    if item is not None and not isinstance(item, str):
        raise CannotApply("item_id: not a string")
    check = _CHECKS.get(etype)
    if check is not None:
        check(event, props, item)  # raises before anything changes

    pos = profile["positions"].setdefault(stream, {"max": 0, "floor": 0, "applied": []})
    pos["applied"].append(seq)
    pos["max"] = max(pos["max"], seq)
    if profile["user_id"] is None and event.get("user_id"):
        profile["user_id"] = event["user_id"]
    first, last = profile["first_seen"], profile["last_seen"]
    profile["first_seen"] = t if first is None else min(first, t)
    profile["last_seen"] = t if last is None else max(last, t)
    counts = profile["counts"]
    counts[etype] = counts.get(etype, 0) + 1
    category = props.get("category")
    if isinstance(category, str):
        cats = profile["categories"]
        cats[category] = cats.get(category, 0) + 1
    if item is not None and etype in _ITEM_TYPES:
        _push_recent(
            profile["recent_items"], {"item_id": item, "type": etype, "time": t, "seq": seq}
        )
    handler = _HANDLERS.get(etype)
    if handler is not None and (consent or etype != "consent_updated"):
        handler(profile, event, props, item, t, seq)
    return True


_ITEM_TYPES = frozenset(
    {
        "item_viewed",
        "item_added_to_cart",
        "item_purchased",
        "simulator_used",
        "recommendation_clicked",
        "item_rated",
    }
)


def _newer(t: int, seq: int, than: dict[str, Any], tkey: str = "time", skey: str = "seq") -> bool:
    return (t, seq) > (than.get(tkey, 0), than.get(skey, 0))


def _push_recent(recent: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    key = (entry["time"], entry["seq"])
    i = 0  # newest first; events mostly arrive in order, so this usually stops at once
    while i < len(recent) and (recent[i]["time"], recent[i]["seq"]) > key:
        i += 1
    if i < RECENT_ITEMS:
        recent.insert(i, entry)
        del recent[RECENT_ITEMS:]


def _hold(profile: dict[str, Any], item: str, t: int, value: float, source: str) -> None:
    held = profile["held"].get(item)
    if held is None:
        profile["held"][item] = {"since": t, "value": value, "source": source}
    else:
        held["since"] = min(held["since"], t)
        held["value"] = max(held["value"], value)


def _purchased(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    value = props.get("value", 0.0)
    _hold(p, item, t, float(value) if isinstance(value, int | float) else 0.0, "item_purchased")


def _simulated(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    name = props.get("simulator")
    params = {k: v for k, v in props.items() if k != "simulator"}
    use = p["simulators"].get(name)
    if use is None:
        p["simulators"][name] = {
            "count": 1,
            "last_time": t,
            "last_seq": seq,
            "last_item": item,
            "last_parameters": params,
        }
        return
    use["count"] += 1
    if _newer(t, seq, use, "last_time", "last_seq"):
        use.update(last_time=t, last_seq=seq, last_item=item, last_parameters=params)


def _offer(p: dict[str, Any], item: str) -> dict[str, Any]:
    return p["offers"].setdefault(
        item,
        {
            "shown": 0,
            "clicked": 0,
            "dismissed": 0,
            "shown_times": [],
            "last_clicked": None,
            "last_dismissed": None,
        },
    )


def _shown(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    for shown in props["items"]:
        if isinstance(shown, dict) and isinstance(shown.get("item_id"), str):
            stats = _offer(p, shown["item_id"])
            stats["shown"] += 1
            stats["shown_times"].append(t)
            stats["shown_times"].sort(reverse=True)
            del stats["shown_times"][RECENT_IMPRESSIONS:]


def _clicked(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    stats = _offer(p, item)
    stats["clicked"] += 1
    stats["last_clicked"] = max(stats["last_clicked"] or 0, t)


def _dismissed(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    stats = _offer(p, item)
    stats["dismissed"] += 1
    stats["last_dismissed"] = max(stats["last_dismissed"] or 0, t)


def _identified(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    anon = e.get("anonymous_id")
    if isinstance(anon, str) and anon not in p["anonymous_ids"]:
        p["anonymous_ids"].append(anon)
        p["anonymous_ids"].sort()
        del p["anonymous_ids"][MAX_ANONYMOUS_IDS:]


def _consent(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    if _newer(t, seq, p["consent"]):
        p["consent"] = {k: props.get(k) for k in ("analytics", "personalization", "marketing")}
        p["consent"].update(time=t, seq=seq)


def _crm(
    p: dict[str, Any], e: dict[str, Any], props: dict[str, Any], item: Any, t: int, seq: int
) -> None:
    outcome, channel = props.get("outcome"), props.get("channel")
    key = item or "_none"
    last = p["crm"].get(key)
    if last is None:
        p["crm"][key] = {
            "outcome": outcome,
            "channel": channel,
            "time": t,
            "seq": seq,
            "contacts": 1,
        }
    else:
        last["contacts"] += 1
        if _newer(t, seq, last):
            last.update(outcome=outcome, channel=channel, time=t, seq=seq)
    if outcome == "converted" and item is not None:
        _hold(p, item, t, 0.0, "crm")


def _needs_item(etype: str) -> Any:
    def check(e: dict[str, Any], props: dict[str, Any], item: Any) -> None:
        if item is None:
            raise CannotApply(f"item_id: required for {etype}")

    return check


def _needs_str(*fields: str) -> Any:
    def check(e: dict[str, Any], props: dict[str, Any], item: Any) -> None:
        for f in fields:
            if not isinstance(props.get(f), str):
                raise CannotApply(f"properties.{f}: missing or not a string")

    return check


def _needs_items(e: dict[str, Any], props: dict[str, Any], item: Any) -> None:
    if not isinstance(props.get("items"), list):
        raise CannotApply("properties.items: missing or not a list")


_CHECKS = {
    "item_purchased": _needs_item("item_purchased"),
    "recommendation_clicked": _needs_item("recommendation_clicked"),
    "offer_dismissed": _needs_item("offer_dismissed"),
    "simulator_used": _needs_str("simulator"),
    "crm_contact_logged": _needs_str("outcome", "channel"),
    "recommendation_shown": _needs_items,
}

_HANDLERS = {
    "item_purchased": _purchased,
    "simulator_used": _simulated,
    "recommendation_shown": _shown,
    "recommendation_clicked": _clicked,
    "offer_dismissed": _dismissed,
    "user_identified": _identified,
    "consent_updated": _consent,
    "crm_contact_logged": _crm,
}


def content(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile without delivery bookkeeping: what a replay must reproduce exactly."""
    out = {k: v for k, v in profile.items() if k != "positions"}
    out.setdefault("stitched", [])  # absent from profiles stored before login stitching
    out.setdefault("identified_as", None)
    out["positions"] = {s: p["max"] for s, p in profile.get("positions", {}).items()}
    return out
