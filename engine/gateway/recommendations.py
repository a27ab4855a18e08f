"""A user's lists: `GET /v1/recommendations/{user}` (stored when fresh, else computed) and its
live stream of Server-Sent Events.

The stream, `GET /v1/recommendations/{user}/stream?slots=home,similar&site_key=`: one core
subscription on `reco.<user>.*` per connected browser, dropped when the browser goes; each
`recommendations_updated` of a requested slot is sent as `event: recommendations` with `id:`
the recommendation id; a comment every 15 s keeps proxies from closing it. A browser that
reads slowly gets the newest list of each slot (see `live.LatestPerSlot`); a message that is
not a list is skipped and counted (`stream_skipped_total`), not allowed to end the stream.
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

from engine.bus import NoAnswer
from engine.gateway.auth import require_site_or_internal
from engine.gateway.live import LatestPerSlot
from engine.gateway.state import GatewayState, gateway_state
from engine.ids import uuid7_time_ms
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

router = APIRouter(dependencies=[Depends(require_site_or_internal)])


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
    """The newest stored list of a user's slot, or None."""
    found = await state.bus.last(RECOMMENDATIONS, reco_subject(token, slot))
    if found is None:
        return None
    stored: dict[str, Any] = orjson.loads(found[1])
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
    if not user_id or len(user_id) > 128:
        return bad("user_id", "1-128 chars")
    stored = None
    if item is None:
        stored = await stored_list(state, token_of(user_id, anonymous), slot)
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
        return JSONResponse({"detail": "the recommender did not answer"}, status_code=503)
    data = orjson.loads(reply)
    if "error" in data:
        e = data["error"]
        return JSONResponse(
            {"errors": [{"field": e["field"], "reason": e["reason"]}]},
            status_code=e.get("status", 422),
        )
    return recommendation(state, data, None, "computed")


def sse_frame(data: bytes, catalog: ItemCatalog) -> bytes | None:
    """One `event: recommendations` frame, or None when `data` is not a list."""
    try:
        event = enrich(orjson.loads(data), catalog)
        event_id = event["id"].encode()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return b"id: " + event_id + b"\nevent: recommendations\ndata: " + orjson.dumps(event) + b"\n\n"


async def sse_events(
    request: Request, state: GatewayState, token: str, wanted: set[str]
) -> AsyncGenerator[bytes, None]:
    """The frames of one browser's stream, until it disconnects."""
    unread = LatestPerSlot()

    async def on_list(subject: str, data: bytes) -> None:
        slot = last_token(subject)
        if not wanted or slot in wanted:
            unread.put(slot, data)

    sub = await state.bus.listen(reco_filter(token), on_list)
    try:
        yield b": connected\n\n"
        while True:
            try:
                data = await asyncio.wait_for(unread.get(), HEARTBEAT_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": ping\n\n"
                continue
            frame = sse_frame(data, state.catalog)
            if frame is None:
                state.metrics.inc("stream_skipped_total")
                continue
            yield frame
    finally:
        with contextlib.suppress(Exception):  # the connection may be closing with the app
            await sub.unsubscribe()


@router.get(
    "/v1/recommendations/{user_id}/stream",
    summary="Live updates of a user's lists (Server-Sent Events)",
    description="`event: recommendations`, `data:` the recommendations_updated event with "
    "catalogue details, `id:` its recommendation id. Site key as `site_key=` (EventSource "
    "cannot send headers).",
)
async def stream(
    user_id: str, request: Request, slots: str = "", anonymous: bool = False
) -> Response:
    if not user_id or len(user_id) > 128:
        return bad("user_id", "1-128 chars")
    wanted = {s for s in slots.split(",") if s}
    events = sse_events(request, gateway_state(request), token_of(user_id, anonymous), wanted)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
