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

What is served is a `ServedList` (`nerve_client.events.served`, `nerve schema served_list`): the
stored `recommendations_updated` with each entry's catalogue details in `items[].item`. Its
source is in `X-Nerve-Source` (`stored`, `stale`, `computed`); when the recommender served less
than was asked (a `k` over the slot's maximum) its reply's top-level `warning` is moved to the
`X-Nerve-Warning` header (exposed to browsers by `edge`).

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
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from engine.bus import NoAnswer
from engine.gateway.auth import READER, is_internal_call, require_reader, site_key_of
from engine.gateway.live import FRAMES, HEARTBEAT_S, EventStream, LatestPerSlot, StreamLease
from engine.gateway.ops import unavailable
from engine.gateway.responses import COMMON, UNAVAILABLE, Errors, answer, common
from engine.gateway.state import GatewayState, gateway_state
from engine.recommender.catalog import ItemCatalog
from nerve_client.errors import EventRejected
from nerve_client.events import parse_event
from nerve_client.events.catalog import RecommendationsUpdated
from nerve_client.events.items import details
from nerve_client.events.served import ServedList
from nerve_client.ids import canonical_id, unsafe_character, uuid7_time_ms
from nerve_client.subjects import (
    RECOMMENDATIONS,
    REQUEST_SUBJECT,
    last_token,
    reco_filter,
    reco_subject,
    user_token,
)

SLOT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STREAM_RETRY_S = 5
SOURCE_HEADER = "X-Nerve-Source"
WARNING_HEADER = "X-Nerve-Warning"
"""Set when the list served is not quite what was asked (the recommender's `warning`)."""

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
            entry = {**entry, "item": details(item)}
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
    state: GatewayState,
    event: dict[str, Any],
    k: int | None,
    source: str,
    warning: str | None = None,
) -> Response:
    """The list as served: cut to `k`, items enriched, its source in `X-Nerve-Source` and the
    recommender's `warning`, if any, in `X-Nerve-Warning`."""
    if k is not None:
        props = event["properties"]
        event = {**event, "properties": {**props, "items": props["items"][:k]}}
    event = enrich(event, state.catalog)
    state.metrics.inc("recommendations_total", source=source)
    headers = {SOURCE_HEADER: source}
    if warning:
        headers[WARNING_HEADER] = header_safe(warning)
    return Response(orjson.dumps(event), media_type="application/json", headers=headers)


def header_safe(text: str, limit: int = 512) -> str:
    """`text` as a header value: printable ASCII (others as `?`), at most `limit` chars."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def split_warning(data: Any) -> tuple[Any, str | None]:
    """A recommender reply without its top-level `warning`, and the warning (None: none)."""
    if not isinstance(data, dict) or "warning" not in data:
        return data, None
    rest = {k: v for k, v in data.items() if k != "warning"}
    warning = data["warning"]
    return rest, warning if isinstance(warning, str) else None


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


LIST_HEADERS = {
    SOURCE_HEADER: {
        "description": "`stored` (fresh from the log), `stale` (stored; the recommender did not "
        "answer) or `computed` (by the recommender for this request)",
        "schema": {"type": "string", "enum": ["stored", "stale", "computed"]},
    },
    WARNING_HEADER: {
        "description": "Present when the list is not quite what was asked, e.g. a `k` over the "
        "slot's maximum (the maximum is served)",
        "schema": {"type": "string"},
    },
}
GONE = answer("The user was forgotten (`nerve forget`): nothing is served for them", Errors)


@router.get(
    "/v1/recommendations/{user_id}",
    summary="A user's recommendations for a slot",
    description="The latest stored list when it is fresh (younger than the gateway's "
    "`fresh_s` and than the last model switch), else computed by the recommender "
    "(`reco.request`). The body is a `ServedList` (`nerve schema served_list`): the "
    "`recommendations_updated` event with each entry's catalogue details in `items[].item`. "
    "A known user's list needs a site key and an identity token for that user; an anonymous "
    "id's (`anonymous=true`) the site key alone; an internal bearer token reads any.",
    response_model=ServedList,
    responses={
        200: {"description": "The list", "headers": LIST_HEADERS},
        **COMMON,
        404: answer("Unknown slot", Errors),
        410: GONE,
        503: UNAVAILABLE,
    },
    openapi_extra={"security": READER},
)
async def get_recommendations(
    user_id: str,
    request: Request,
    slot: Annotated[str, Query(pattern=SLOT.pattern, description="The slot")] = "home",
    k: Annotated[
        int | None,
        Query(ge=1, le=100, description="At most this many items (the slot's maximum if more)"),
    ] = None,
    anonymous: Annotated[bool, Query(description="`user_id` is an anonymous id")] = False,
    item: Annotated[str | None, Query(description="The item a `similar` slot is about")] = None,
) -> Response:
    state = gateway_state(request)
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
    data, warning = split_warning(orjson.loads(reply))
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
    return recommendation(state, computed, None, "computed", warning)


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
    description="A `text/event-stream` that lasts until the browser goes. " + FRAMES + " Site "
    "key as `site_key=` and a known user's identity token as `identity=` (EventSource cannot "
    "send headers); an anonymous id (`anonymous=true`) needs the site key alone.",
    response_class=EventStream,
    responses={
        200: {"description": "The stream (see the description for its frames)"},
        **common(by_ref=True),
        410: answer(GONE["description"], Errors, by_ref=True),
        429: answer(
            "Too many open streams for this key or client address", retry=True, by_ref=True
        ),
    },
    openapi_extra={"security": READER},
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
    return EventStream(
        events,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(lease.release),  # when the stream never started
    )
