"""The reports the ops service reads for the gateway: click-through (`/v1/stats`, asked on
`nerve.ops.stats`) and the experiments' results (`/v1/experiments`, on
`nerve.ops.experiments`), with the models of their questions and answers.

Both scan ACTIVITY (and RECOMMENDATIONS, SHADOW, the registry), which the internet-facing
gateway's credential may not read: the ops service's may (`engine.credentials`), and it
answers with aggregates only, never an event. A report that cannot be read is answered with
`Failure` (its reason), which the gateway turns into a 503; a malformed question likewise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from engine.bus import Bus
from engine.experiments import spec
from engine.experiments.reading import experiment_report
from engine.experiments.report import ExperimentReport
from engine.recommender.stats import click_through

REPORT_TIMEOUT_S = 30.0
"""How long the gateway waits for a report: each reads the streams from its start time."""
MAX_HOURS = 24 * 366
Q = TypeVar("Q", bound=BaseModel)


class StatsQuery(BaseModel):
    """`nerve.ops.stats`: click-through over the last `hours`."""

    model_config = ConfigDict(extra="forbid")

    hours: float = Field(default=24.0, gt=0, le=MAX_HOURS)


class SlotRow(BaseModel):
    """Impressions, clicks and dismissals of one slot and model version."""

    slot: str
    model_version: str
    impressions: int
    items_shown: int
    clicks: int
    dismissals: int
    ctr: float


class Stats(BaseModel):
    """`/v1/stats`: click-through since `since`."""

    since: AwareDatetime
    rows: list[SlotRow]


class ExperimentsQuery(BaseModel):
    """`nerve.ops.experiments`: the running experiments, or `every` one."""

    model_config = ConfigDict(extra="forbid")

    every: bool = False


class ExperimentsAnswer(BaseModel):
    """`/v1/experiments`: one report per experiment, oldest first."""

    experiments: list[ExperimentReport]


class Failure(BaseModel):
    """A report the ops service could not read, and why."""

    error: str


async def stats(bus: Bus, query: StatsQuery) -> Stats:
    """Click-through per slot and model version over the query's hours."""
    since = datetime.now(UTC) - timedelta(hours=query.hours)
    rows = [SlotRow(**r.to_dict()) for r in await click_through(bus, since)]
    return Stats(since=since, rows=rows)


async def experiments(bus: Bus, query: ExperimentsQuery) -> ExperimentsAnswer:
    """Each experiment's result per variant (`?every`: the stopped ones too)."""
    found = await spec.listing(await bus.registry())
    reports = [await experiment_report(bus, e) for e in found if query.every or e.running]
    return ExperimentsAnswer(experiments=reports)


def answering(
    bus: Bus, query: type[Q], read: Callable[[Bus, Q], Awaitable[BaseModel]]
) -> Callable[[bytes], Awaitable[bytes]]:
    """A request handler: the question parsed as `query`, the report read, its JSON; a
    `Failure` instead when either fails (the handler never raises: the asker gets a reason,
    not a timeout)."""

    async def handle(data: bytes) -> bytes:
        try:
            answer: BaseModel = await read(bus, query.model_validate_json(data or b"{}"))
        except ValidationError as exc:
            answer = Failure(error=f"bad question: {exc.errors()[0]['msg']}")
        except Exception as exc:  # a stream missing, a broker away: said, not swallowed
            answer = Failure(error=f"{type(exc).__name__}: {exc}"[:300])
        return orjson.dumps(answer.model_dump(mode="json"))

    return handle
