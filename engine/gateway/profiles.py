"""`GET /v1/profiles/{user}`: a user's profile, for internal callers only.

The gateway cannot decrypt profiles (its broker credential reads neither `profiles` nor
`userkeys`): it asks the profiles service on `nerve.profiles.get`, which reads the profile
with a fresh key cache (a key erased by `nerve forget` is never served again) and answers.
The body is the stored `Profile` (`engine.profiles.profile`); a refusal of the service (no
profile: 404) is `{"errors": [{"field", "reason"}]}` like the gateway's other bad requests.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from engine.bus import NoAnswer
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.ops import unavailable
from engine.gateway.responses import COMMON, UNAVAILABLE, Errors, answer
from engine.gateway.state import gateway_state
from engine.profiles.profile import Profile
from nerve_client.subjects import PROFILE_REQUEST_SUBJECT

router = APIRouter(dependencies=[Depends(require_internal)])


@router.get(
    "/v1/profiles/{user_id}",
    summary="A user's profile (internal callers only: Authorization: Bearer <token>)",
    response_model=Profile,
    responses={
        200: {"description": "The stored profile (times in Unix milliseconds)"},
        **COMMON,
        404: answer("No profile for this user", Errors),
        503: UNAVAILABLE,
    },
    openapi_extra={"security": INTERNAL_ONLY},
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
        problem = {"field": e.get("field", "user_id"), "reason": e["reason"]}
        return JSONResponse({"errors": [problem]}, status_code=e.get("status", 422))
    return Response(reply, media_type="application/json")
