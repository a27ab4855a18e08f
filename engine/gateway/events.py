"""`POST /v1/events`: one event or a JSON array of events (at most `max_batch`), as
`application/json`, `text/plain` (what `navigator.sendBeacon` sends, no CORS preflight), or
CloudEvents in each HTTP mode: `application/cloudevents+json`, `…-batch+json`, or binary (`ce-*`
headers, the body its `data`). `engine.cloudevents` maps them; their errors name the CloudEvents
field or header (`data.item_id`, `ce-type`), and a dead letter keeps the structured form.

What a request gets back:

* 202 — at least one event was stored. The body lists the ids of the accepted events
  (`duplicates` counts those the log already held: a re-send is stored once) and, for each
  refused event, its index, its id and every field with its reason.
* 422 — every event was refused; same body. Refused events go to DEADLETTER either way.
* 400 — the body is not JSON (dead-lettered whole, raw bytes kept).
* 401 / 403 — no site key / unknown key or origin not allowed for it, or a bad internal token
  (not dead-lettered: unauthenticated input is never stored, or anyone could fill the store).
* 413 — body over `max_body_bytes` or more than `max_batch` events (the client is told; nothing
  is stored). 429 — the key's rate limit, with `Retry-After`. 503 — the broker did not
  acknowledge; nothing was stored, so the client may retry (with the same ids).

Who may send what is `nerve_client.events.producers`: with a site key the producer is `site`
(behavioural events; one naming a `user_id` only with a valid identity token for that user, in
`X-Nerve-Identity` or `?identity=`); with `Authorization: Bearer <internal token>` it is
`server` (purchases, consent of record, CRM events, ...). A token that fails verification does
not fail the request: each event that needed it is refused with the token's problem as its
reason, and the rest are stored.

Refused input costs rate budget like accepted input: a body that is not JSON takes one event
of the key's budget before it is dead-lettered, a refused event one like any other, so a key
limited to R events/s with burst B writes at most B + R·t records to DEADLETTER in t seconds.
Server-side producers have no rate limit (they hold a secret).

The gateway assigns an id to an event that has none and always sets `received_at`. Clients that
retry should send their own ids: a retried event with a gateway-assigned id is a new event.
"""

from __future__ import annotations

import time
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from engine.bus import Outgoing
from engine.cloudevents import CloudEvent, binary_event, ce_errors, from_cloudevent, is_binary
from engine.gateway.auth import (
    SITE_OR_INTERNAL,
    Refused,
    check_internal,
    check_site,
    identity,
    identity_token_of,
    is_internal_call,
)
from engine.gateway.responses import Detail, answer
from engine.gateway.state import GatewayState, gateway_state
from engine.settings import GatewaySettings
from nerve_client.errors import EventRejected, FieldError, PublishError
from nerve_client.events import DeadLetter, Envelope, json_schema
from nerve_client.events.envelope import type_error
from nerve_client.events.producers import PRODUCERS, admit
from nerve_client.identity import InvalidIdentity
from nerve_client.ids import uuid7

JSON_TYPES = ("application/json", "text/plain", "")
CE_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json")
RETRY = {"Retry-After": "1"}

router = APIRouter()


class TokenBucket:
    """Events per second with a burst allowance; `take` returns seconds to wait (0 = allowed)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self, n: int) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


def buckets_for(settings: GatewaySettings) -> dict[str, TokenBucket]:
    """A full bucket per site key."""
    return {k.key: TokenBucket(k.rate_per_s, k.burst) for k in settings.site_keys}


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its producer (`site` or `server`), the origin its dead letters
    name, its rate budget (None: unlimited) and the user its identity token proved (or why
    the token it sent proves nothing)."""

    producer: str
    origin: str
    bucket: TokenBucket | None = None
    identified: str | None = None
    token_problem: str | None = None


def caller_of(request: Request, state: GatewayState) -> Caller:
    """The `Caller` of `request`, or `Refused` when its credentials are missing or wrong."""
    if is_internal_call(request):
        check_internal(request, state.settings.internal_tokens)
        return Caller("server", "server")
    site = check_site(request, state.keys)
    origin = f"site:{site.key[:8]}"
    bucket = state.buckets[site.key]
    token = identity_token_of(request)
    if not token:
        return Caller("site", origin, bucket)
    try:
        return Caller("site", origin, bucket, identified=identity(site, token).user_id)
    except InvalidIdentity as exc:
        return Caller("site", origin, bucket, token_problem=exc.reason)


def charge(caller: Caller, n: int) -> None:
    """Take `n` events from the caller's budget, or `Reply` 429 with `Retry-After`."""
    wait = caller.bucket.take(n) if caller.bucket is not None else 0.0
    if wait:
        raise Reply(429, {"detail": "rate limit"}, {"Retry-After": f"{max(1, round(wait))}"})


@dataclass
class Triage:
    """A decoded batch split into events to store and refusals to dead-letter."""

    events: list[Envelope] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)


def accept(data: Any, caller: Caller, now: datetime, forgotten: Container[str]) -> Envelope:
    """The event `data` describes if `caller` may send it, else `EventRejected`: an unknown
    type is told only the types this caller may send (`nerve_client.events.producers.admit`); an
    event of a user erased by `nerve forget` (`forgotten` tokens) is refused, so nothing is
    stored under their id again."""
    etype = data.get("type") if isinstance(data, dict) else ""
    if not isinstance(etype, str):  # missing: "required", never "unknown event type None"
        raise EventRejected([type_error(etype, PRODUCERS[caller.producer])])
    event = admit(
        caller.producer,
        data,
        now=now,
        identified=caller.identified,
        token_problem=caller.token_problem,
    )
    if event.user_token in forgotten:
        field_name = "user_id" if event.user_id else "anonymous_id"
        reason = "this user was forgotten (nerve forget); nothing is stored for them"
        raise EventRejected([FieldError(field_name, reason)])
    return event


def triage(
    items: list[Any],
    caller: Caller,
    *,
    cloudevents: bool,
    binary: bool = False,
    now: datetime,
    forgotten: Container[str] = frozenset(),
) -> Triage:
    """Validate each item (`cloudevents`: CloudEvents, structured form; `binary`: the one
    `binary_event` made from headers and body); refusals carry their index, id (as sent) and
    reasons, named as the producer wrote them, and a dead-letter record."""
    out = Triage()
    origin = caller.origin
    stamp = now.isoformat().replace("+00:00", "Z")
    for index, item in enumerate(items):
        event_id = item.get("id") if isinstance(item, dict) else None
        try:
            data = from_cloudevent(item, binary=binary, received=stamp) if cloudevents else item
            if isinstance(data, dict):
                data = {**data, "received_at": stamp}
                data.setdefault("id", uuid7())
                event_id = event_id if cloudevents else data["id"]
            try:
                event = accept(data, caller, now, forgotten)
            except EventRejected as exc:
                if not cloudevents:
                    raise
                raise EventRejected(ce_errors(exc.errors, item, binary=binary)) from None
        except EventRejected as exc:
            eid = event_id if isinstance(event_id, str) else None
            errors = [{"field": e.field, "reason": e.reason} for e in exc.errors]
            out.rejected.append({"index": index, "id": eid, "errors": errors})
            raw = orjson.dumps(item)
            record = DeadLetter.build(
                "gateway", raw, exc.errors, now, f"{origin}#{index}", eid, record_id=uuid7()
            )
            out.deadletters.append(record)
            continue
        out.events.append(event)
    return out


class Reply(Exception):
    """Ends a request early with `status` and `body` (caught by `post_events`)."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers


class RefusedField(BaseModel):
    field: str = Field(description="dotted path, as the producer wrote it (`ce-type`, ...)")
    reason: str


class Refusal(BaseModel):
    index: int = Field(description="position in the batch")
    id: str | None = Field(description="the id the event was sent with (or was given)")
    errors: list[RefusedField] = Field(description="fields as the producer wrote them (`ce-type`)")


class Ingested(BaseModel):
    """What `POST /v1/events` answers: 202 when it stored any event, 422 when it refused all."""

    accepted: int
    ids: list[str] = Field(description="ids of the accepted events, in order")
    duplicates: int = Field(description="accepted events the log already held (stored once)")
    rejected: list[Refusal]


_CONTENT = "#/paths/~1v1~1events/post/requestBody/content/"
_BINARY = ("specversion", "id", "source", "type", "time", "subject")


def _pointer(ctype: str) -> str:
    return _CONTENT + ctype.replace("~", "~0").replace("/", "~1") + "/schema"


def request_body() -> dict[str, Any]:
    """The OpenAPI `requestBody` (and binary-mode header parameters) of `POST /v1/events`,
    generated from the models: every type a producer may send, and `CloudEvent`. A route
    cannot add to `components`, so each schema keeps its `$defs` and refers to them (and the
    batch forms to the single ones) by JSON pointer into this very operation."""
    native, ce = _pointer(JSON_TYPES[0]), _pointer(CE_TYPES[0])
    event = json_schema(types=PRODUCERS["server"], ref_template=native + "/$defs/{model}")
    defs = {**event.pop("$defs"), "NerveEvent": event}
    one = {"$ref": native + "/$defs/NerveEvent"}
    many = {"type": "array", "items": one, "minItems": 1}
    cloud = CloudEvent.model_json_schema(ref_template=ce + "/$defs/{model}")
    data = {"$ref": ce + "/$defs/CloudEventData"}  # the body in binary mode
    said = "CloudEvents binary mode: the attributes as headers, `data` as the JSON body"
    return {
        "parameters": [
            {"name": f"ce-{a}", "in": "header", "schema": {"type": "string"}, "description": said}
            for a in _BINARY
        ],
        "requestBody": {
            "required": True,
            "description": "A Nerve event or a batch of them (`application/json`, or "
            "`text/plain` as `sendBeacon` sends it), a CloudEvent or a batch of them, or a "
            "CloudEvent in binary mode (`ce-*` headers; the body is its `data`).",
            "content": {
                JSON_TYPES[0]: {"schema": {"$defs": defs, "anyOf": [one, many, data]}},
                JSON_TYPES[1]: {"schema": {"$ref": native}},
                CE_TYPES[0]: {"schema": cloud},
                CE_TYPES[1]: {"schema": {"type": "array", "items": {"$ref": ce}, "minItems": 1}},
            },
        },
    }


@router.post(
    "/v1/events",
    status_code=202,
    summary="Ingest one event or a batch (Nerve JSON or CloudEvents)",
    openapi_extra={**request_body(), "security": SITE_OR_INTERNAL},
    responses={
        202: answer("Stored (some may be refused; see `rejected`)", Ingested),
        422: {  # an empty batch is a `Detail`
            "description": "Every event refused, each with its fields and reasons",
            "model": Ingested | Detail,
        },
        400: answer("Body is not JSON"),
        401: answer("No site key"),
        403: answer("Unknown site key or origin"),
        413: answer("Body or batch too large"),
        415: answer("Unsupported content type"),
        429: answer("Rate limit; see Retry-After", retry=True),
        500: answer("Unexpected error (logged with its traceback)"),
        503: answer("Broker unavailable; nothing stored, retry with the same ids", retry=True),
    },
)
async def post_events(request: Request) -> Response:
    state = gateway_state(request)
    try:
        status, body, headers = await ingest(request, state)
    except Reply as reply:
        status, body, headers = reply.status, reply.body, reply.headers
    state.metrics.inc("http_requests_total", status=str(status))
    return JSONResponse(body, status_code=status, headers=headers)


async def ingest(
    request: Request, state: GatewayState
) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """Check, decode, triage and store one request's events; `Reply` for an early answer."""
    try:
        caller = caller_of(request, state)
    except Refused as exc:
        raise Reply(exc.status, {"detail": exc.detail}) from None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    binary = ctype not in CE_TYPES and is_binary(request.headers)
    if not binary and ctype not in JSON_TYPES + CE_TYPES:
        raise Reply(415, {"detail": f"unsupported content type {ctype!r}"})
    raw = await read_body(request, state.settings.max_body_bytes)
    now = datetime.now(UTC)
    if binary:  # one event; its content type is its datacontenttype, checked as such
        items = [binary_event(request.headers, raw)]
    else:
        items = await decode_batch(state, raw, caller, now)
    charge(caller, len(items))
    result = triage(
        items,
        caller,
        cloudevents=binary or ctype in CE_TYPES,
        binary=binary,
        now=now,
        forgotten=state.forgotten,
    )
    return 202 if result.events else 422, await store(state, result), None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Reply(413, {"detail": f"body of {declared} bytes exceeds {limit}"})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Reply(413, {"detail": f"body exceeds {limit} bytes"})
    return bytes(body)


async def decode_batch(state: GatewayState, raw: bytes, caller: Caller, now: datetime) -> list[Any]:
    """The items of a body; a body that is not JSON is dead-lettered whole (400), once the
    caller's budget paid for it (429 and nothing stored when it cannot)."""
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        charge(caller, 1)
        errors = [FieldError("", f"body is not valid JSON: {exc}")]
        record = DeadLetter.build("gateway", raw, errors, now, caller.origin, record_id=uuid7())
        try:
            await state.bus.deadletter([record])
        except PublishError as perr:
            raise Reply(503, {"detail": str(perr)}, RETRY) from None
        state.metrics.inc("events_total", outcome="rejected")
        raise Reply(400, {"detail": str(errors[0])}) from None
    items = decoded if isinstance(decoded, list) else [decoded]
    limit = state.settings.max_batch
    if len(items) > limit:
        raise Reply(413, {"detail": f"{len(items)} events exceed the batch limit of {limit}"})
    if not items:
        raise Reply(422, {"detail": "empty batch"})
    return items


async def store(state: GatewayState, result: Triage) -> dict[str, Any]:
    """Publish the accepted events and the dead letters together; the response body."""
    out = [Outgoing.event(e) for e in result.events]
    out += [Outgoing.deadletter(d) for d in result.deadletters]
    try:
        acks = await state.bus.publish(out)
    except PublishError as exc:
        raise Reply(503, {"detail": str(exc)}, RETRY) from None
    state.received.note(result.events, acks)  # ACTIVITY seq -> received_at, for freshness
    duplicates = sum(1 for a in acks[: len(result.events)] if a.duplicate)
    state.metrics.inc("events_total", len(result.events) - duplicates, outcome="accepted")
    state.metrics.inc("events_total", duplicates, outcome="duplicate")
    state.metrics.inc("events_total", len(result.rejected), outcome="rejected")
    return {
        "accepted": len(result.events),
        "ids": [e.id for e in result.events],
        "duplicates": duplicates,
        "rejected": result.rejected,
    }
