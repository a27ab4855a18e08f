"""A user's lists: `GET /v1/recommendations/{user}` (stored when fresh, else computed) and its
live stream of Server-Sent Events.

The stream, `GET /v1/recommendations/{user}/stream?slots=home,similar&site_key=`: one core
subscription on `reco.<user>.*` per connected browser, dropped when the browser goes; each
`recommendations_updated` of a requested slot is sent as `event: recommendations` with `id:`
the recommendation id; a comment every 15 s keeps proxies from closing it. A browser that
reads slowly gets the newest list of each slot (see `live.LatestPerSlot`).

Who may read: a known user's lists and stream need an identity token for exactly that user (or
an internal bearer token); an anonymous id (`anonymous=true`) needs only the site key
(`auth.require_reader`). Open streams are capped per site key and per client address
(`GatewaySettings.max_streams_per_key` / `max_streams_per_client`; 429 with `Retry-After`).

Nothing is served that is not a list for this user: a message on `reco.<user>.<slot>` (stored
or live) and a reply to `reco.request` are validated with the `recommendations_updated` model
and must name this user and slot. A stored one that fails is not served (the recommender is
asked instead, `stored_refused_total`); a live one is skipped and counted
(`stream_skipped_total`), never allowed to end the stream; a reply that fails is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from engine.bus import NoAnswer
from engine.errors import EventRejected
from engine.events import parse_event
from engine.events.catalog import RecommendationsUpdated
from engine.gateway.auth import is_internal_call, require_reader, site_key_of
from engine.gateway.live import LatestPerSlot, StreamLease
from engine.gateway.ops import unavailable
from engine.gateway.state import GatewayState, gateway_state
from engine.ids import canonical_id, unsafe_character, uuid7_time_ms
from engine.recommender.catalog import ItemCatalog
from engine.subjects import (
    RECOMMENDATIONS,
    REQUEST_SUBJECT,
    last_token,
    reco_filter,
    reco_subject,
    user_token,
)

SLOT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HEARTBEAT_S = 15.0
ITEM_FIELDS = ("name", "url", "image", "category", "value")
STREAM_RETRY_S = 5

router = APIRouter(dependencies=[Depends(require_reader)])


def valid_list(data: Any, token: str, slot: str) -> dict[str, Any] | None:
    """`data` (bytes or decoded JSON) as served when it is a valid `recommendations_updated`
    of the user with subject token `token` for `slot`; else None."""
    try:
        decoded = orjson.loads(data) if isinstance(data, bytes) else data
        event = parse_event(decoded)
    except (EventRejected, orjson.JSONDecodeError):
        return None
    props = event.properties
    if not isinstance(props, RecommendationsUpdated) or props.slot != slot:
        return None
    if event.user_token != token:
        return None
    served: dict[str, Any] = decoded  # valid as it is: served without re-encoding it
    return served


def enrich(event: dict[str, Any], catalog: ItemCatalog) -> dict[str, Any]:
    """A copy of a recommendations_updated event whose items carry catalogue details."""
    props = event["properties"]
    items = []
    for entry in props["items"]:
        item = catalog.get(entry["item_id"])
        if item is not None:
            details = {f: getattr(item, f) for f in ITEM_FIELDS if getattr(item, f) is not None}
            entry = {**entry, "item": details}
        items.append(entry)
    return {**event, "properties": {**props, "items": items}}


def token_of(user_id: str, anonymous: bool) -> str:
    return user_token(None, user_id) if anonymous else user_token(user_id, None)


def user_problem(user_id: str) -> str | None:
    """Why `user_id` (a path parameter) is not an id, or None: the rules of events' ids."""
    if not user_id or len(user_id) > 128:
        return "1-128 chars"
    return unsafe_character(user_id)


def gone(anonymous: bool) -> JSONResponse:
    """410 for a user erased by `nerve forget`: nothing is computed or stored for them."""
    field = "anonymous_id" if anonymous else "user_id"
    body = {"errors": [{"field": field, "reason": "this user was forgotten (nerve forget)"}]}
    return JSONResponse(body, status_code=410)


def bad(field: str, reason: str) -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "reason": reason}]}, status_code=422)


def recommendation(
    state: GatewayState, event: dict[str, Any], k: int | None, source: str
) -> Response:
    """The list as served: cut to `k`, items enriched, its source in `X-Nerve-Source`."""
    if k is not None:
        props = event["properties"]
        event = {**event, "properties": {**props, "items": props["items"][:k]}}
    event = enrich(event, state.catalog)
    state.metrics.inc("recommendations_total", source=source)
    return Response(
        orjson.dumps(event), media_type="application/json", headers={"X-Nerve-Source": source}
    )


async def stored_list(state: GatewayState, token: str, slot: str) -> dict[str, Any] | None:
    """The newest stored list of a user's slot when it is a valid one (see `valid_list`)."""
    found = await state.bus.last(RECOMMENDATIONS, reco_subject(token, slot))
    if found is None:
        return None
    stored = valid_list(found[1], token, slot)
    if stored is None:
        state.metrics.inc("stored_refused_total")
    return stored


def is_fresh(state: GatewayState, stored: dict[str, Any], k: int | None) -> bool:
    """Made after the last model switch, younger than `fresh_s`, and long enough for `k`."""
    made = uuid7_time_ms(stored["id"]) / 1000
    fresh = made > state.model_switched and time.time() - made < state.settings.fresh_s
    return fresh and (k is None or k <= len(stored["properties"]["items"]))


@router.get(
    "/v1/recommendations/{user_id}",
    summary="A user's recommendations for a slot",
    description="The latest stored list when it is fresh (younger than the gateway's "
    "`fresh_s` and than the last model switch), else computed by the recommender "
    "(`reco.request`). The body is the `recommendations_updated` event. Site key or "
    "internal bearer token.",
    responses={
        404: {"description": "Unknown slot"},
        422: {"description": "Bad parameter (field and reason)"},
        503: {"description": "The recommender did not answer and nothing is stored"},
    },
)
async def get_recommendations(
    user_id: str,
    request: Request,
    slot: str = "home",
    k: int | None = None,
    anonymous: bool = False,
    item: str | None = None,
) -> Response:
    state = gateway_state(request)
    if not SLOT.match(slot):
        return bad("slot", "not a slot name")
    if k is not None and not 1 <= k <= 100:
        return bad("k", "between 1 and 100")
    problem = user_problem(user_id)
    if problem:
        return bad("user_id", problem)
    user_id = canonical_id(user_id)
    token = token_of(user_id, anonymous)
    if token in state.forgotten:
        return gone(anonymous)
    stored = None
    if item is None:
        stored = await stored_list(state, token, slot)
        if stored is not None and is_fresh(state, stored, k):
            return recommendation(state, stored, k, "stored")
    body: dict[str, Any] = {"slot": slot, "anonymous_id" if anonymous else "user_id": user_id}
    if k is not None:
        body["k"] = k
    if item is not None:
        body["context"] = {"item_id": item}
    try:
        reply = await state.bus.request(
            REQUEST_SUBJECT, orjson.dumps(body), state.settings.request_timeout_s
        )
    except NoAnswer:
        if stored is not None:
            return recommendation(state, stored, k, "stale")
        state.metrics.inc("recommendations_total", source="unavailable")
        return unavailable(request, "recommender_unavailable", "the recommender did not answer")
    data = orjson.loads(reply)
    if "error" in data:
        e = data["error"]
        return JSONResponse(
            {"errors": [{"field": e["field"], "reason": e["reason"]}]},
            status_code=e.get("status", 422),
        )
    computed = valid_list(data, token, slot)
    if computed is None:
        state.metrics.inc("recommendations_total", source="invalid")
        return JSONResponse({"detail": "the recommender's answer is not a list"}, status_code=503)
    return recommendation(state, computed, None, "computed")


def sse_frame(event: dict[str, Any], catalog: ItemCatalog) -> bytes:
    """One `event: recommendations` frame of a valid list (see `valid_list`)."""
    event = enrich(event, catalog)
    head = b"id: " + event["id"].encode() + b"\nevent: recommendations\ndata: "
    return head + orjson.dumps(event) + b"\n\n"


async def sse_events(
    request: Request,
    state: GatewayState,
    token: str,
    wanted: set[str],
    lease: StreamLease | None = None,
) -> AsyncGenerator[bytes, None]:
    """The frames of one browser's stream, until it disconnects (then `lease` is released)."""
    unread = LatestPerSlot()

    async def on_list(subject: str, data: bytes) -> None:
        slot = last_token(subject)
        if wanted and slot not in wanted:
            return
        # validated on arrival: a bad message must not displace an unread good list
        event = valid_list(data, token, slot)
        if event is None:
            state.metrics.inc("stream_skipped_total")
            return
        unread.put(slot, orjson.dumps(event))

    sub = None
    try:
        sub = await state.bus.listen(reco_filter(token), on_list)
        yield b": connected\n\n"
        while True:
            try:
                data = await asyncio.wait_for(unread.get(), HEARTBEAT_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": ping\n\n"
                continue
            yield sse_frame(orjson.loads(data), state.catalog)
    finally:
        if lease is not None:
            lease.release()
        if sub is not None:
            with contextlib.suppress(Exception):  # the connection may be closing with the app
                await sub.unsubscribe()


@router.get(
    "/v1/recommendations/{user_id}/stream",
    summary="Live updates of a user's lists (Server-Sent Events)",
    description="`event: recommendations`, `data:` the recommendations_updated event with "
    "catalogue details, `id:` its recommendation id. Site key as `site_key=` and a known "
    "user's identity token as `identity=` (EventSource cannot send headers).",
    responses={429: {"description": "Too many open streams for this key or client address"}},
)
async def stream(
    user_id: str, request: Request, slots: str = "", anonymous: bool = False
) -> Response:
    problem = user_problem(user_id)
    if problem:
        return bad("user_id", problem)
    user_id = canonical_id(user_id)
    state = gateway_state(request)
    if token_of(user_id, anonymous) in state.forgotten:
        return gone(anonymous)
    key = "internal" if is_internal_call(request) else site_key_of(request) or ""
    client = request.client.host if request.client else "unknown"
    lease = state.streams.open(key, client)
    if lease is None:
        state.metrics.inc("streams_refused_total")
        return JSONResponse(
            {"detail": "too many open live streams for this site key or client address"},
            status_code=429,
            headers={"Retry-After": str(STREAM_RETRY_S)},
        )
    wanted = {s for s in slots.split(",") if s}
    events = sse_events(request, state, token_of(user_id, anonymous), wanted, lease)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(lease.release),  # when the stream never started
    )
