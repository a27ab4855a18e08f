"""`GET /v1/experiments` (internal): each experiment's result per variant, as `nerve experiments`.

Read from the streams at each call (`engine.experiments.reading`), as `/v1/stats` is: the
gateway's bus must be allowed to read the registry, RECOMMENDATIONS, SHADOW and the ACTIVITY
types the report counts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from engine.experiments import spec
from engine.experiments.reading import experiment_report
from engine.experiments.report import ExperimentReport
from engine.gateway.auth import INTERNAL_ONLY, require_internal
from engine.gateway.responses import COMMON, UNAVAILABLE
from engine.gateway.state import gateway_state

router = APIRouter()


class ExperimentsAnswer(BaseModel):
    """`/v1/experiments`: one report per experiment, oldest first."""

    experiments: list[ExperimentReport]


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
    bus = gateway_state(request).bus
    found = await spec.listing(await bus.registry())
    reports = [await experiment_report(bus, e) for e in found if every or e.running]
    body = ExperimentsAnswer(experiments=reports)
    return JSONResponse(body.model_dump(mode="json"))
