"""The `reco.request` contract: what a caller asks the recommender, and the error reply.

A successful reply is the `recommendations_updated` event itself; a failed one is
`{"error": {"field", "reason", "status"}}` (`ErrorReply`).
"""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RequestContext(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    item_id: str | None = Field(default=None, min_length=1, max_length=128)
    page_url: str | None = Field(default=None, max_length=2000)


class RecoRequest(BaseModel):
    """A request on `reco.request`: exactly one of `user_id` and `anonymous_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=128)
    slot: str = Field(min_length=1, max_length=64)
    k: int | None = Field(default=None, ge=1, le=100)
    context: RequestContext = Field(default_factory=RequestContext)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    reason: str
    status: int = 422


class ErrorReply(BaseModel):
    """The reply to a request that could not be answered."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    error: ErrorDetail


def error_reply(field: str, reason: str, status: int = 422) -> bytes:
    """An `ErrorReply` as JSON bytes."""
    reply = ErrorReply(error=ErrorDetail(field=field, reason=reason, status=status))
    return orjson.dumps(reply.model_dump())


def parse_request(data: bytes) -> RecoRequest | bytes:
    """The request in `data`, or the error reply (JSON bytes) naming the field and reason."""
    try:
        req = RecoRequest.model_validate_json(data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        return error_reply(".".join(str(p) for p in e["loc"]), e["msg"])
    if (req.user_id is None) == (req.anonymous_id is None):
        return error_reply("user_id", "give exactly one of user_id, anonymous_id")
    return req
