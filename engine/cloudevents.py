"""CloudEvents 1.0 (structured JSON mode) to and from the Nerve envelope.

The mapping is one to one: `id`, `source`, `type`, `time` are the same; `subject` is the user
(user id, or the anonymous id when `data` names no user); `data` holds every other envelope
field. `dataschema` and extension attributes are ignored; `datacontenttype`, when present, must
be JSON.
"""

from __future__ import annotations

from typing import Any

from engine.errors import EventRejected, FieldError

_ENVELOPE_IN_DATA = (
    "schema_version",
    "user_id",
    "anonymous_id",
    "session_id",
    "item_id",
    "properties",
    "context",
)


def from_cloudevent(ce: Any) -> dict[str, Any]:
    """The envelope dict of one structured-mode CloudEvent, or `EventRejected`."""
    if not isinstance(ce, dict):
        raise EventRejected([FieldError("", "a CloudEvent is a JSON object")])
    if ce.get("specversion") != "1.0":
        raise EventRejected([FieldError("specversion", "must be '1.0'")])
    ctype = ce.get("datacontenttype", "application/json")
    if not isinstance(ctype, str) or "json" not in ctype:
        raise EventRejected([FieldError("datacontenttype", "only JSON data is accepted")])
    data = ce.get("data", {})
    if not isinstance(data, dict):
        raise EventRejected([FieldError("data", "must be a JSON object")])
    unknown = sorted(set(data) - set(_ENVELOPE_IN_DATA))
    if unknown:
        raise EventRejected([FieldError(f"data.{k}", "unknown field") for k in unknown])
    out: dict[str, Any] = {k: ce[k] for k in ("id", "type", "time", "source") if k in ce}
    out.update(data)
    subject = ce.get("subject")
    if subject is not None and "user_id" not in out and "anonymous_id" not in out:
        out["user_id"] = subject
    return out


def to_cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    """The structured-mode CloudEvent of an envelope dict (as `Envelope.to_json` writes it)."""
    ce: dict[str, Any] = {"specversion": "1.0", "datacontenttype": "application/json"}
    for k in ("id", "type", "time", "source"):
        if k in event:
            ce[k] = event[k]
    ce["subject"] = event.get("user_id") or event.get("anonymous_id")
    ce["data"] = {k: event[k] for k in _ENVELOPE_IN_DATA if k in event}
    return ce
