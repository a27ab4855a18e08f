"""CloudEvents 1.0 to and from the Nerve envelope, in the three modes of the HTTP binding.

Structured mode (`application/cloudevents+json`: one event) and batch mode
(`application/cloudevents-batch+json`: a JSON array of them) carry the attributes in the JSON;
binary mode carries them as `ce-*` headers (values percent-encoded) and `data` as the body,
whose `Content-Type` is the `datacontenttype`. `binary_event` turns a binary request into the
structured form, so one mapping (`from_cloudevent`) serves all three:

| CloudEvents       | Nerve envelope                                                          |
|-------------------|-------------------------------------------------------------------------|
| `specversion`     | must be `1.0`                                                           |
| `id`              | `id`: a UUID or ULID as sent; any other string (`A234-1234-1234`) the   |
|                   | UUIDv5 of `source` and `id`, the pair CloudEvents makes unique: a       |
|                   | re-sent event gets the same id and is stored once                       |
| `source`          | `source`, as sent: a URI-reference (`https://shop.example/web`, `/web`) |
|                   | or a Nerve name (`web`)                                                 |
| `type`            | `type`: a Nerve type, bare (`item_viewed`) or after a dotted prefix,    |
|                   | conventionally reverse DNS (`com.shop.item_viewed`): the last segment   |
| `time`            | `time`; absent, the time the gateway received the event                 |
| `subject`         | `user_id`, when `data` names no user (else not stored)                  |
| `datacontenttype` | must be JSON (`application/json`, `…+json`); absent means JSON          |
| `data`            | the other envelope fields (`CloudEventData`): `user_id`,                |
|                   | `anonymous_id`, `session_id`, `item_id`, `properties`, `context`,       |
|                   | `schema_version`                                                        |
| `dataschema`, extension attributes | accepted, not stored                                   |

A top-level name that is not a CloudEvents attribute name (lower-case letters and digits only)
is refused: `user_id` or `properties` there is an envelope field that belongs in `data`.
Errors name what the producer wrote: `data.properties.amount`, and in binary mode the header
(`ce-type`, `content-type`); `ce_errors` renames the envelope's errors that way.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nerve_client.errors import EventRejected, FieldError
from nerve_client.events.envelope import ID_PATTERN, LATEST, Context, UserId

CE_NAMESPACE = uuid.UUID("5f1d3c1e-7a54-4c55-9d0b-0c3d9a6e6b61")
"""Namespace of the UUIDv5 ids made from a CloudEvent's (`source`, `id`). Never change it: a
re-sent event would get another id and be stored twice."""
ATTRIBUTES = ("id", "source", "type", "time", "subject", "datacontenttype", "dataschema")
_ID = re.compile(ID_PATTERN)
_EXTENSION = re.compile(r"[a-z0-9]{1,20}")
_JSON_TYPE = re.compile(r"(application|text)/([\w.+-]+\+)?json\s*(;.*)?", re.IGNORECASE)


class CloudEventData(BaseModel):
    """`data` of a CloudEvent: the envelope fields that are not CloudEvents attributes."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int | None = Field(default=None, description="default: the latest")
    user_id: UserId | None = None
    anonymous_id: UserId | None = None
    session_id: Annotated[str, Field(max_length=128)] | None = None
    item_id: UserId | None = None
    properties: dict[str, Any] | None = Field(
        default=None, description="the type's properties, as in its Nerve event schema"
    )
    context: Context | None = None


DATA_FIELDS = tuple(CloudEventData.model_fields)


class CloudEvent(BaseModel):
    """One CloudEvents 1.0 event as Nerve accepts it (binary mode: the same, as headers)."""

    model_config = ConfigDict(extra="allow", title="CloudEvent")
    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=256, description="a URI-reference")
    type: str = Field(
        min_length=1, max_length=256, description="`item_viewed` or `com.example.item_viewed`"
    )
    time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="RFC 3339"
    )
    subject: str | None = Field(default=None, description="the user, when data names none")
    datacontenttype: str | None = Field(default=None, description="JSON only")
    dataschema: str | None = None
    data: CloudEventData | None = None


def nerve_type(ce_type: str) -> str:
    """The Nerve type a CloudEvents `type` names: itself, or the last segment after a dotted
    prefix when that is a Nerve type; else `ce_type` unchanged (and refused as unknown)."""
    if ce_type in LATEST:
        return ce_type
    prefix, _, last = ce_type.rpartition(".")
    return last if prefix and last in LATEST else ce_type


def nerve_id(ce_id: str, source: str) -> str:
    """`ce_id` when it is a UUID or ULID, else the UUIDv5 of (`source`, `ce_id`)."""
    if _ID.fullmatch(ce_id):
        return ce_id
    return str(uuid.uuid5(CE_NAMESPACE, f"{source}\n{ce_id}"))  # no URI holds a newline


def _name(attribute: str, binary: bool) -> str:
    if not binary:
        return attribute
    return "content-type" if attribute == "datacontenttype" else f"ce-{attribute}"


def _check_shape(ce: dict[str, Any], binary: bool) -> list[FieldError]:
    errors = []
    ctype = ce.get("datacontenttype")
    if ctype is not None and not (isinstance(ctype, str) and _JSON_TYPE.fullmatch(ctype.strip())):
        errors.append(FieldError(_name("datacontenttype", binary), "only JSON data is accepted"))
    if "data_base64" in ce:
        errors.append(FieldError("data_base64", "only JSON data is accepted"))
    if ce.get("data") is not None and not isinstance(ce["data"], dict):
        errors.append(FieldError("data", "must be a JSON object"))
    for key in sorted(k for k in ce if k not in CloudEvent.model_fields and k != "data_base64"):
        if not _EXTENSION.fullmatch(key):
            reason = "not a CloudEvents attribute name (envelope fields go in data)"
            errors.append(FieldError(_name(key, binary), reason))
    return errors


def _validation_errors(exc: ValidationError, binary: bool) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            reason = "required header" if binary else "required attribute"
        elif err["type"] == "extra_forbidden":
            reason = f"unknown field (data holds {', '.join(DATA_FIELDS)})"
        elif loc == ["specversion"]:
            reason = "must be '1.0'"
        field = ".".join(loc) if loc[0] == "data" else _name(loc[0], binary)
        out.append(FieldError(field, reason))
    return out


def from_cloudevent(
    ce: Any, *, binary: bool = False, received: str | None = None
) -> dict[str, Any]:
    """The envelope dict of one CloudEvent (structured form), or `EventRejected` naming the
    CloudEvents fields (`binary`: the headers they came in). `received` is the time an event
    without `time` is given (None: it has none, and the envelope refuses it)."""
    if not isinstance(ce, dict):
        raise EventRejected([FieldError("", "a CloudEvent is a JSON object")])
    errors = _check_shape(ce, binary)
    if errors:
        raise EventRejected(errors)
    try:
        event = CloudEvent.model_validate(ce)
    except ValidationError as exc:
        raise EventRejected(_validation_errors(exc, binary)) from None
    out: dict[str, Any] = {
        "id": nerve_id(event.id, event.source),
        "type": nerve_type(event.type),
        "source": event.source,
    }
    if event.time is not None or received is not None:
        out["time"] = event.time if event.time is not None else received
    data = event.data.model_dump(exclude_none=True) if event.data is not None else {}
    out.update(data)
    if event.subject is not None and "user_id" not in out and "anonymous_id" not in out:
        out["user_id"] = event.subject
    return out


def ce_errors(errors: list[FieldError], ce: Any, *, binary: bool = False) -> list[FieldError]:
    """`errors` of the envelope made from `ce` (`from_cloudevent`), each renamed to where the
    producer wrote it: `properties.amount` -> `data.properties.amount`, `type` -> `ce-type`."""
    ce = ce if isinstance(ce, dict) else {}
    data = ce.get("data")
    named = isinstance(data, dict) and ("user_id" in data or "anonymous_id" in data)
    from_subject = not named and ce.get("subject") is not None
    out = []
    for e in errors:
        head, dot, rest = e.field.partition(".")
        if head in ("id", "type", "time", "source") or (head == "user_id" and from_subject):
            attribute = "subject" if head == "user_id" else head
            field = _name(attribute, binary) + dot + rest
        elif head in DATA_FIELDS:
            field = f"data.{e.field}"
        else:
            field = e.field
        out.append(FieldError(field, e.reason))
    return out


def binary_event(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The structured form of a binary-mode request: each `ce-<name>` header (percent-decoded)
    as attribute `<name>`, `Content-Type` as `datacontenttype`, the body as `data` (its text
    when it is not JSON, which `from_cloudevent` then refuses as not an object)."""
    ce: dict[str, Any] = {}
    for name, value in headers.items():
        low = name.lower()
        if low.startswith("ce-") and len(low) > 3:
            ce[low[3:]] = unquote(value)
    ctype = headers.get("content-type")
    if ctype:
        ce["datacontenttype"] = ctype
    if body.strip():
        try:
            ce["data"] = orjson.loads(body)
        except orjson.JSONDecodeError:
            ce["data"] = body.decode("utf-8", "replace")
    return ce


def is_binary(headers: Mapping[str, str]) -> bool:
    """True when a request carries CloudEvents attributes as `ce-*` headers."""
    return any(name.lower().startswith("ce-") for name in headers)


def to_cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    """The structured-mode CloudEvent of an envelope dict (as `Envelope.to_json` writes it)."""
    ce: dict[str, Any] = {"specversion": "1.0", "datacontenttype": "application/json"}
    for k in ("id", "type", "time", "source"):
        if k in event:
            ce[k] = event[k]
    ce["subject"] = event.get("user_id") or event.get("anonymous_id")
    ce["data"] = {k: event[k] for k in DATA_FIELDS if k in event}
    return ce
