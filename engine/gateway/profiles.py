"""`GET /v1/profiles/{user}`: a user's profile, for internal callers only."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from engine.gateway.auth import require_internal
from engine.gateway.state import gateway_state
from engine.profiles.reading import read_profile

router = APIRouter(dependencies=[Depends(require_internal)])


@router.get(
    "/v1/profiles/{user_id}",
    summary="A user's profile (internal callers only: Authorization: Bearer <token>)",
    responses={
        401: {"description": "No bearer token"},
        403: {"description": "Not internal"},
        404: {"description": "No profile"},
    },
)
async def get_profile(user_id: str, request: Request, anonymous: bool = False) -> JSONResponse:
    # A fresh key cache per request: a key erased by `nerve forget` is never served again.
    store = gateway_state(request).profiles.fresh()
    found = await read_profile(store, user_id, anonymous=anonymous)
    if found is None:
        return JSONResponse({"detail": f"no profile for {user_id!r}"}, status_code=404)
    return JSONResponse(found.model_dump(mode="json"))
