"""`GET /v1/profiles/{user}`: a user's profile, for internal callers only.

The gateway cannot decrypt profiles (its broker credential reads neither `profiles` nor
`userkeys`): it asks the profiles service on `nerve.profiles.get`, which reads the profile
with a fresh key cache (a key erased by `nerve forget` is never served again) and answers.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from engine.bus import NoAnswer
from engine.gateway.auth import require_internal
from engine.gateway.ops import unavailable
from engine.gateway.state import gateway_state
from engine.subjects import PROFILE_REQUEST_SUBJECT

router = APIRouter(dependencies=[Depends(require_internal)])


@router.get(
    "/v1/profiles/{user_id}",
    summary="A user's profile (internal callers only: Authorization: Bearer <token>)",
    responses={
        401: {"description": "No bearer token"},
        403: {"description": "Not internal"},
        404: {"description": "No profile"},
        503: {"description": "The profiles service did not answer"},
    },
)
async def get_profile(user_id: str, request: Request, anonymous: bool = False) -> Response:
    state = gateway_state(request)
    body = {"anonymous_id" if anonymous else "user_id": user_id}
    try:
        reply = await state.bus.request(
            PROFILE_REQUEST_SUBJECT, orjson.dumps(body), state.settings.request_timeout_s
        )
    except NoAnswer:
        return unavailable(request, "profiles_unavailable", "the profiles service did not answer")
    data = orjson.loads(reply)
    if "error" in data:
        e = data["error"]
        return JSONResponse({"detail": e["reason"]}, status_code=e.get("status", 422))
    return Response(reply, media_type="application/json")
