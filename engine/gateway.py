"""The HTTP gateway: event ingestion, profiles for internal callers, health and metrics.

`POST /v1/events` takes one event or a JSON array of events (at most `max_batch`), as
`application/json`, `text/plain` (what `navigator.sendBeacon` sends, no CORS preflight),
`application/cloudevents+json` or `application/cloudevents-batch+json`.

What a request gets back:

* 202 — at least one event was stored. The body lists the ids of the accepted events
  (`duplicates` counts those the log already held: a re-send is stored once) and, for each
  refused event, its index, its id and every field with its reason.
* 422 — every event was refused; same body. Refused events go to DEADLETTER either way.
* 400 — the body is not JSON (dead-lettered whole, raw bytes kept).
* 401 / 403 — no site key / unknown key or origin not allowed for it (not dead-lettered:
  unauthenticated input is never stored, or anyone could fill the store).
* 413 — body over `max_body_bytes` or more than `max_batch` events (the client is told; nothing
  is stored). 429 — the key's rate limit, with `Retry-After`. 503 — the broker did not
  acknowledge; nothing was stored, so the client may retry (with the same ids).

The gateway assigns an id to an event that has none and always sets `received_at`. Clients that
retry should send their own ids: a retried event with a gateway-assigned id is a new event.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from engine import __version__
from engine.bus import ConnectionState, Outgoing, Publisher, connect
from engine.bus.consumer import scan, tail
from engine.bus.reader import last_for_subject
from engine.cloudevents import from_cloudevent
from engine.errors import EventRejected, FieldError, PublishError
from engine.events import CRM_TYPES, OUTPUT_TYPES, SYSTEM_TYPES, DeadLetter, Envelope, parse_event
from engine.ids import uuid7, uuid7_time_ms
from engine.metrics import Metrics
from engine.profiles.reading import read_profile
from engine.profiles.store import ProfileStore
from engine.recommender.catalog import ItemCatalog
from engine.recommender.service import PUBLISHED_SUBJECT, REQUEST_SUBJECT, reco_subject
from engine.recommender.stats import click_through
from engine.settings import GatewaySettings, SiteKey
from engine.subjects import user_token
from engine.web import WIDGETS, enrich, install

SITE_KEY_HEADER = "X-Nerve-Site-Key"
SLOT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JSON_TYPES = ("application/json", "text/plain", "")
CE_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json")


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


@dataclass
class Triage:
    """A decoded batch split into events to store and refusals to dead-letter."""

    events: list[Envelope] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)


def triage(items: list[Any], *, cloudevents: bool, origin: str, now: datetime) -> Triage:
    """Validate each item; refusals carry their index, id and reasons and a dead-letter record."""
    out = Triage()
    stamp = now.isoformat().replace("+00:00", "Z")
    for index, item in enumerate(items):
        event_id = item.get("id") if isinstance(item, dict) else None
        try:
            data = from_cloudevent(item) if cloudevents else item
            if isinstance(data, dict):
                data = {**data, "received_at": stamp}
                data.setdefault("id", uuid7())
                event_id = data["id"]
            event = parse_event(data, now=now)
            if event.type in CRM_TYPES or event.type in SYSTEM_TYPES or event.type in OUTPUT_TYPES:
                raise EventRejected(
                    [FieldError("type", f"{event.type} is not accepted from a site key")]
                )
        except EventRejected as exc:
            errors = [{"field": e.field, "reason": e.reason} for e in exc.errors]
            out.rejected.append({"index": index, "id": event_id, "errors": errors})
            raw = orjson.dumps(item)
            eid = event_id if isinstance(event_id, str) else None
            record = DeadLetter.build(
                "gateway", raw, exc.errors, now, f"{origin}#{index}", eid, record_id=uuid7()
            )
            out.deadletters.append(record)
            continue
        out.events.append(event)
    return out


def create_app(settings: GatewaySettings, nats_url: str, connect_timeout: float = 10.0) -> FastAPI:
    """The gateway application; it connects to `nats_url` on start-up and closes on shutdown."""
    keys: dict[str, SiteKey] = {k.key: k for k in settings.site_keys}
    buckets = {k.key: TokenBucket(k.rate_per_s, k.burst) for k in settings.site_keys}
    metrics = Metrics()
    metrics.describe("http_requests_total", "counter", "Requests to /v1/events by status")
    metrics.describe("events_total", "counter", "Events by outcome: accepted, duplicate, rejected")
    metrics.describe("nats_connected", "gauge", "1 when the gateway is connected to NATS")
    state = ConnectionState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect(nats_url, "nerve-gateway", timeout=connect_timeout, state=state)
        app.state.publisher = Publisher(nc, ack_timeout=settings.ack_timeout_s)
        app.state.profiles = await ProfileStore.open(nc)
        app.state.nc = nc

        async def on_model(_msg: Any) -> None:
            app.state.model_switched = time.time()

        await nc.subscribe(PUBLISHED_SUBJECT, cb=on_model)
        catalog = app.state.catalog = ItemCatalog()
        last: list[int] = [0]

        def on_items(batch: list[tuple[int, str, bytes]]) -> None:
            catalog.update(batch)
            if batch:
                last[0] = batch[-1][0]

        await scan(nc.jetstream(), "CATALOG", on_items)
        try:
            async with tail(nc.jetstream(), "CATALOG", last[0] + 1, catalog.update):
                yield
        finally:
            await nc.drain()

    app = FastAPI(
        title="Nerve gateway",
        version=__version__,
        lifespan=lifespan,
        description="Event ingestion for Nerve. Event schemas: `nerve schema`.",
    )
    app.state.metrics = metrics
    app.state.connection = state
    app.state.model_switched = time.time()  # lists stored before this gateway started: ask

    def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        metrics.inc("http_requests_total", status=str(status))
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post(
        "/v1/events",
        status_code=202,
        summary="Ingest one event or a batch",
        responses={
            202: {"description": "Stored (some may be refused; see `rejected`)"},
            422: {"description": "Every event refused; each with its fields and reasons"},
            400: {"description": "Body is not JSON"},
            401: {"description": "No site key"},
            403: {"description": "Unknown site key or origin"},
            413: {"description": "Body or batch too large"},
            429: {"description": "Rate limit; see Retry-After"},
            503: {"description": "Broker unavailable; nothing stored, retry"},
        },
    )
    async def post_events(request: Request) -> Any:
        key = request.headers.get(SITE_KEY_HEADER) or request.query_params.get("site_key")
        if not key:
            return answer(401, {"detail": f"missing {SITE_KEY_HEADER} header or site_key"})
        site = keys.get(key)
        if site is None:
            return answer(403, {"detail": "unknown site key"})
        origin = request.headers.get("origin")
        if origin and "*" not in site.origins and origin not in site.origins:
            return answer(403, {"detail": f"origin {origin} is not allowed for this site key"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES + CE_TYPES:
            return answer(415, {"detail": f"unsupported content type {ctype!r}"})
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return answer(413, {"detail": f"body of {declared} bytes exceeds {limit}"})
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return answer(413, {"detail": f"body exceeds {limit} bytes"})
        now = datetime.now(UTC)
        publisher: Publisher = request.app.state.publisher
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            errors = [FieldError("", f"body is not valid JSON: {exc}")]
            record = DeadLetter.build(
                "gateway", bytes(body), errors, now, f"site:{key[:8]}", record_id=uuid7()
            )
            try:
                await publisher.deadletter([record])
            except PublishError as perr:
                return answer(503, {"detail": str(perr)}, {"Retry-After": "1"})
            metrics.inc("events_total", outcome="rejected")
            return answer(400, {"detail": str(errors[0])})
        items = decoded if isinstance(decoded, list) else [decoded]
        if len(items) > settings.max_batch:
            return answer(
                413,
                {"detail": f"{len(items)} events exceed the batch limit of {settings.max_batch}"},
            )
        if not items:
            return answer(422, {"detail": "empty batch"})
        wait = buckets[key].take(len(items))
        if wait:
            return answer(429, {"detail": "rate limit"}, {"Retry-After": f"{max(1, round(wait))}"})
        result = triage(items, cloudevents=ctype in CE_TYPES, origin=f"site:{key[:8]}", now=now)
        out = [Outgoing.event(e) for e in result.events]
        out += [Outgoing.deadletter(d) for d in result.deadletters]
        try:
            acks = await publisher.publish(out)
        except PublishError as exc:
            return answer(503, {"detail": str(exc)}, {"Retry-After": "1"})
        duplicates = sum(1 for a in acks[: len(result.events)] if a.duplicate)
        metrics.inc("events_total", len(result.events) - duplicates, outcome="accepted")
        metrics.inc("events_total", duplicates, outcome="duplicate")
        metrics.inc("events_total", len(result.rejected), outcome="rejected")
        body_out = {
            "accepted": len(result.events),
            "ids": [e.id for e in result.events],
            "duplicates": duplicates,
            "rejected": result.rejected,
        }
        return answer(202 if result.events else 422, body_out)

    @app.get(
        "/v1/profiles/{user_id}",
        summary="A user's profile (internal callers only: Authorization: Bearer <token>)",
        responses={
            401: {"description": "No bearer token"},
            403: {"description": "Not internal"},
            404: {"description": "No profile"},
        },
    )
    async def get_profile(user_id: str, request: Request, anonymous: bool = False) -> Any:
        refused = internal(request)
        if refused is not None:
            return refused
        # A fresh key cache per request: a key erased by `nerve forget` is never served again.
        store: ProfileStore = request.app.state.profiles.fresh()
        found = await read_profile(store, user_id, anonymous=anonymous)
        if found is None:
            return JSONResponse({"detail": f"no profile for {user_id!r}"}, status_code=404)
        return JSONResponse(found.model_dump(mode="json"))

    def internal(request: Request) -> JSONResponse | None:
        """None when the request carries an internal bearer token, else the refusal."""
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return JSONResponse(
                {"detail": "internal endpoint: Authorization: Bearer <token>"}, status_code=401
            )
        if not settings.internal_tokens or not any(
            hmac.compare_digest(auth[7:].strip(), t) for t in settings.internal_tokens
        ):
            return JSONResponse({"detail": "not an internal token"}, status_code=403)
        return None

    def site_or_internal(request: Request) -> JSONResponse | None:
        """None for a known site key from an allowed origin, or an internal token."""
        if request.headers.get("authorization"):
            return internal(request)
        key = request.headers.get(SITE_KEY_HEADER) or request.query_params.get("site_key")
        if not key:
            return JSONResponse({"detail": f"missing {SITE_KEY_HEADER} or site_key"}, 401)
        site = keys.get(key)
        if site is None:
            return JSONResponse({"detail": "unknown site key"}, status_code=403)
        origin = request.headers.get("origin")
        if origin and "*" not in site.origins and origin not in site.origins:
            return JSONResponse({"detail": f"origin {origin} is not allowed"}, status_code=403)
        return None

    @app.get(
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
    ) -> Any:
        refused = site_or_internal(request)
        if refused is not None:
            return refused
        if not SLOT.match(slot):
            return JSONResponse({"errors": [{"field": "slot", "reason": "not a slot name"}]}, 422)
        if k is not None and not 1 <= k <= 100:
            return JSONResponse({"errors": [{"field": "k", "reason": "between 1 and 100"}]}, 422)
        if not user_id or len(user_id) > 128:
            return JSONResponse({"errors": [{"field": "user_id", "reason": "1-128 chars"}]}, 422)
        token = user_token(None, user_id) if anonymous else user_token(user_id, None)
        nc = request.app.state.nc
        stored = None
        if item is None:
            found = await last_for_subject(
                nc.jetstream(), "RECOMMENDATIONS", reco_subject(token, slot)
            )
            if found is not None:
                stored = orjson.loads(found[1])
                made = uuid7_time_ms(stored["id"]) / 1000
                fresh = made > request.app.state.model_switched and time.time() - made < (
                    settings.fresh_s
                )
                if fresh and (k is None or k <= len(stored["properties"]["items"])):
                    metrics.inc("recommendations_total", source="stored")
                    return recommendation(stored, k, "stored")
        body: dict[str, Any] = {"slot": slot, "anonymous_id" if anonymous else "user_id": user_id}
        if k is not None:
            body["k"] = k
        if item is not None:
            body["context"] = {"item_id": item}
        try:
            reply = await nc.request(
                REQUEST_SUBJECT, orjson.dumps(body), timeout=settings.request_timeout_s
            )
        except Exception:
            if stored is not None:
                metrics.inc("recommendations_total", source="stale")
                return recommendation(stored, k, "stale")
            metrics.inc("recommendations_total", source="unavailable")
            return JSONResponse({"detail": "the recommender did not answer"}, status_code=503)
        data = orjson.loads(reply.data)
        if "error" in data:
            e = data["error"]
            return JSONResponse(
                {"errors": [{"field": e["field"], "reason": e["reason"]}]},
                status_code=e.get("status", 422),
            )
        metrics.inc("recommendations_total", source="computed")
        return recommendation(data, None, "computed")

    def recommendation(event: dict[str, Any], k: int | None, source: str) -> Response:
        if k is not None:
            props = event["properties"]
            event = {**event, "properties": {**props, "items": props["items"][:k]}}
        event = enrich(event, app.state.catalog)
        return Response(
            orjson.dumps(event), media_type="application/json", headers={"X-Nerve-Source": source}
        )

    @app.get("/v1/stats", summary="Click-through rate per slot and model version (internal)")
    async def get_stats(request: Request, hours: float = 24.0) -> Any:
        refused = internal(request)
        if refused is not None:
            return refused
        if not 0 < hours <= 24 * 366:
            return JSONResponse(
                {"errors": [{"field": "hours", "reason": "0 < hours <= 8784"}]}, 422
            )
        since = datetime.now(UTC) - timedelta(hours=hours)
        rows = await click_through(request.app.state.nc.jetstream(), since)
        return JSONResponse({"since": since.isoformat(), "rows": [r.to_dict() for r in rows]})

    install(
        app,
        keys,
        site_or_internal,
        lambda user, anonymous: user_token(None, user) if anonymous else user_token(user, None),
    )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/demo/" if (WIDGETS / "demo").is_dir() else "/docs")

    @app.get("/healthz", summary="Liveness and broker connection")
    async def healthz() -> Any:
        body = {"status": "ok" if state.connected else "degraded", "nats": state.as_dict()}
        return JSONResponse(body, status_code=200 if state.connected else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        metrics.set("nats_connected", 1.0 if state.connected else 0.0)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
