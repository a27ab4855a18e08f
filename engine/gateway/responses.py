"""What the gateway's routes answer besides their success bodies, as OpenAPI documents it.

Two error bodies exist, and each status has one of them:

* `Errors` — `{"errors": [{"field", "reason"}]}`: the request named something bad (a parameter,
  an unknown slot, a forgotten user): 404 of a list, 410, and every 422 but those of
  `POST /v1/events` (whose 202/422 body lists each refused event with its errors).
* `Detail` — `{"detail": "..."}`: a refusal or an outage in words: 401/403 (credentials), 413,
  415, 429 and every 5xx. A 503 that asks for a retry carries `Retry-After` (seconds); so does
  a 429.

`answer` builds one entry of a route's `responses=`; `common` the entries every route behind a
credential check shares (`COMMON`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """One bad field of a request, with the reason."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(description="The parameter or field, dotted; empty for the whole body")
    reason: str


BadField = Problem
"""The same model under a second name (both are imported; one name, `Problem`, is its own)."""


class Errors(BaseModel):
    """A request refused for what it names: each bad field with its reason."""

    model_config = ConfigDict(extra="forbid")
    errors: list[Problem] = Field(min_length=1)


class Detail(BaseModel):
    """A refusal or an outage, in words."""

    model_config = ConfigDict(extra="forbid")
    detail: str


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the same request again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def answer(
    description: str,
    model: type[BaseModel] = Detail,
    *,
    retry: bool = False,
    by_ref: bool = False,
) -> dict[str, Any]:
    """One `responses=` entry: `model` as its JSON body, `Retry-After` when it asks a retry.

    FastAPI files a `model` under the route's own media type; a route that answers something
    else on success (the live stream's `text/event-stream`) names its JSON errors `by_ref`
    (the models are in the components: other routes use them)."""
    entry: dict[str, Any] = {"description": description}
    if by_ref:
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        entry["content"] = {"application/json": {"schema": ref}}
    else:
        entry["model"] = model
    if retry:
        entry["headers"] = RETRY_AFTER
    return entry


def common(*, by_ref: bool = False) -> dict[int | str, dict[str, Any]]:
    """The answers of every route behind a credential check with parameters."""
    return {
        401: answer(
            "No credentials: site key, identity token or bearer token missing", by_ref=by_ref
        ),
        403: answer(
            "Credentials refused: unknown site key, origin not allowed, bad token", by_ref=by_ref
        ),
        422: answer("A bad parameter: each field with its reason", Errors, by_ref=by_ref),
        500: answer("Unexpected error (logged with its traceback)", by_ref=by_ref),
    }


COMMON = common()

UNAVAILABLE = answer(
    "The broker or the service behind it did not answer (retry after `Retry-After`), or "
    "answered something that is not valid",
    retry=True,
)
