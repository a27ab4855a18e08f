"""`GET /v1/experiments` (internal): each experiment's result per variant, as `nerve experiments`.

Read by the ops service at each call (`engine.ops.reports`, asked on `nerve.ops.experiments`),
as `/v1/stats` is: the report scans the registry, RECOMMENDATIONS, SHADOW and ACTIVITY, none
of which the internet-facing gateway's credential may read.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.ops import ask_report
from engine.gateway.responses import COMMON, UNAVAILABLE
from engine.ops.reports import ExperimentsAnswer, ExperimentsQuery
from nerve_client.subjects import OPS_EXPERIMENTS_SUBJECT

router = APIRouter()
__all__ = ["ExperimentsAnswer", "router"]


@router.get(
    "/v1/experiments",
    summary="Shadow and A/B experiments: the result per variant, with intervals (internal)",
    dependencies=[Depends(require_internal)],
    response_model=ExperimentsAnswer,
    responses={**COMMON, 503: UNAVAILABLE},
    openapi_extra={"security": INTERNAL_ONLY},
)
async def get_experiments(request: Request, every: bool = False) -> JSONResponse:
    """The running experiments (`?every=true`: also the stopped ones), each with impressions,
    clicks, conversions, value and hit rate per variant, Wilson 95 % intervals, and the
    two-proportion z-test of the challenger (or shadow) against the control."""
    query = ExperimentsQuery(every=every)
    return await ask_report(request, OPS_EXPERIMENTS_SUBJECT, query, ExperimentsAnswer)
