"""`POST /v1/crm/events`: CRM events over HTTP, for CRMs that do not speak NATS.

A CRM backend sends `Authorization: Bearer <CRM key>` (`GatewaySettings.crm_keys`, from
`--crm-keys` / `NERVE_CRM_KEYS`; none configured: every request is refused). The key is a
server-side secret of its own: a site key (public, in every browser) or an internal token is
not one, and gets 401 (no `Authorization`) or 403 (a bearer that is not a CRM key). The body
is one event or a JSON array, as for `POST /v1/events`, and the same code validates and stores
it (`engine.gateway.events`), with producer `crm`: only the CRM types are accepted
(`nerve_client.events.producers`), `source` defaults to `crm`, and the events go to
`crm.<user>.<type>` (the CRM stream).

Answers: 202 (some stored; `rejected` lists each refused event's index, id and fields with
reasons), 422 (all refused), 400 (not JSON), 401 / 403, 413, 415, 503 (broker away; retry with
the same ids). Refused events are dead-lettered like the gateway's others.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engine.gateway.auth import CRM_ONLY, Refused, check_internal
from engine.gateway.events import (
    JSON_TYPES,
    Caller,
    Ingested,
    Reply,
    decode_batch,
    read_body,
    store,
    triage,
)
from engine.gateway.responses import Detail, answer
from engine.gateway.state import GatewayState, gateway_state
from nerve_client.events import json_schema
from nerve_client.events.producers import PRODUCERS

PRODUCER = "crm"
PATH = "/v1/crm/events"
router = APIRouter()


def request_body() -> dict[str, Any]:
    """The OpenAPI `requestBody` of `POST /v1/crm/events`, generated from the models: one
    event of a type the `crm` producer may send, or a batch of them. Built like
    `engine.gateway.events.request_body` (which documents every `server` type and
    CloudEvents, neither accepted here): a route cannot add to `components`, so the schema
    keeps its `$defs` and refers to them by JSON pointer into this very operation."""
    path = PATH.replace("~", "~0").replace("/", "~1")
    here = f"#/paths/{path}/post/requestBody/content/{JSON_TYPES[0].replace('/', '~1')}/schema"
    event = json_schema(types=PRODUCERS[PRODUCER], ref_template=here + "/$defs/{model}")
    event["title"] = "CRM event"
    defs = {**event.pop("$defs"), "CrmEvent": event}
    one = {"$ref": here + "/$defs/CrmEvent"}
    many = {"type": "array", "items": one, "minItems": 1}
    return {
        "requestBody": {
            "required": True,
            "description": "A CRM event or a batch of them, as JSON (`source` defaults to "
            f"`crm`); only the CRM types: {', '.join(sorted(PRODUCERS[PRODUCER]))}.",
            "content": {
                JSON_TYPES[0]: {"schema": {"$defs": defs, "anyOf": [one, many]}},
                JSON_TYPES[1]: {"schema": {"$ref": here}},
            },
        }
    }


def check_crm(request: Request, keys: tuple[str, ...]) -> Caller:
    """The CRM caller of `request`, or `Refused` (401 without a bearer, 403 with a wrong one)."""
    try:
        check_internal(request, keys)  # the one bearer check, against the CRM keys
    except Refused as exc:
        detail = "CRM endpoint: Authorization: Bearer <CRM key>"
        if exc.status == 403:
            detail = "not a CRM key (a site key or internal token is not one)"
        raise Refused(exc.status, detail) from None
    return Caller(PRODUCER, PRODUCER)


@router.post(
    PATH,
    status_code=202,
    summary="Ingest CRM events (one or a batch) from a CRM backend",
    openapi_extra={**request_body(), "security": CRM_ONLY},
    responses={
        202: answer("Stored (some may be refused; see `rejected`)", Ingested),
        422: {
            "description": "Every event refused; each with its fields and reasons",
            "model": Ingested | Detail,
        },
        400: answer("Body is not JSON"),
        401: answer("No Authorization: Bearer <CRM key>"),
        403: answer("The bearer is not a CRM key"),
        413: answer("Body or batch too large"),
        415: answer("Not a JSON body"),
        500: answer("Unexpected error (logged with its traceback)"),
        503: answer("Broker unavailable; nothing stored, retry with the same ids", retry=True),
    },
)
async def post_crm_events(request: Request) -> Response:
    state = gateway_state(request)
    try:
        status, body = await ingest(request, state)
    except Refused as exc:
        status, body = exc.status, {"detail": exc.detail}
    except Reply as reply:
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
    return JSONResponse(body, status_code=status)


async def ingest(request: Request, state: GatewayState) -> tuple[int, dict[str, Any]]:
    """Check the key, decode, validate (producer `crm`) and store one request's events."""
    caller = check_crm(request, state.settings.crm_keys)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise Reply(415, {"detail": f"unsupported content type {ctype!r}"})
    raw = await read_body(request, state.settings.max_body_bytes)
    now = datetime.now(UTC)
    items = await decode_batch(state, raw, caller, now)
    items = [{"source": PRODUCER, **i} if isinstance(i, dict) else i for i in items]
    result = triage(items, caller, cloudevents=False, now=now, forgotten=state.forgotten)
    return 202 if result.events else 422, await store(state, result)
