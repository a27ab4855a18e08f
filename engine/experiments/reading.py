"""The scans that feed an experiment's report (`report.tally`), bounded to its time range.

From the experiment's start: the lists of RECOMMENDATIONS and SHADOW that carry its id, then
the ACTIVITY events of the types the report reads (one filtered scan per type), kept only when
they can matter: impressions and clicks of its lists, purchases and interactions of its users,
up to its end plus the attribution window. Memory is bounded by the experiment's own lists and
their users' events, not by the streams.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import orjson

from engine.bus import Bus
from engine.bus.jsmeta import Batch
from engine.experiments.report import (
    ACTION_TYPES,
    DAY_MS,
    Action,
    ExperimentReport,
    ListSeen,
    action_of,
    list_of,
    tally,
)
from engine.experiments.spec import Experiment
from nerve_client.subjects import ACTIVITY, RECOMMENDATIONS, SHADOW, split_user_subject, type_filter


async def experiment_lists(bus: Bus, experiment: Experiment) -> list[ListSeen]:
    """Every stored list (served and shadow) of the experiment."""
    found: list[ListSeen] = []

    def on_batch(batch: Batch) -> None:
        for _, subject, data in batch:
            parts = subject.split(".")
            if len(parts) != 3:
                continue
            try:
                event = orjson.loads(data)
                seen = list_of(experiment.id, parts[1], event)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # not a list of ours (the stream holds only valid ones)
            if seen is not None:
                found.append(seen)

    since = experiment.started_at - timedelta(seconds=1)
    for stream in (RECOMMENDATIONS, SHADOW):
        await bus.scan(stream, on_batch, since=since)
    return found


async def experiment_actions(
    bus: Bus, experiment: Experiment, lists: list[ListSeen]
) -> list[Action]:
    """The ACTIVITY events that can count for the experiment's `lists`."""
    rids = {seen.rid for seen in lists}
    users = {seen.token for seen in lists}
    end = (
        int(experiment.stopped_at.timestamp() * 1000) + int(experiment.attribution_days * DAY_MS)
        if experiment.stopped_at is not None
        else None
    )
    found: list[Action] = []

    def keep(action: Action) -> bool:
        if end is not None and action.time_ms > end:
            return False
        if action.type in ("recommendation_shown", "recommendation_clicked") and action.rid in rids:
            return True
        return action.token in users and action.type != "recommendation_shown"

    def handler() -> Callable[[Batch], None]:
        def on_batch(batch: Batch) -> None:
            for _, subject, data in batch:
                try:
                    token, _ = split_user_subject(subject)
                    action = action_of(token, orjson.loads(data))
                except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
                    continue
                if action is not None and keep(action):
                    found.append(action)

        return on_batch

    since = experiment.started_at - timedelta(seconds=1)
    for etype in ACTION_TYPES:
        await bus.scan(ACTIVITY, handler(), subject=type_filter(etype), since=since)
    return found


async def experiment_report(bus: Bus, experiment: Experiment) -> ExperimentReport:
    """The experiment's result, read from the streams."""
    lists = await experiment_lists(bus, experiment)
    return tally(experiment, lists, await experiment_actions(bus, experiment, lists))
