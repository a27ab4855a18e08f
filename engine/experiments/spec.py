"""What an experiment is, who is in which variant, and starting, stopping and promoting one.

An experiment puts a challenger model version beside the active model of one registry slot:

* **split** (A/B): a user whose bucket is below `share` % gets lists computed with the
  challenger (variant `challenger`), every other user with the active model (`control`);
* **shadow**: everyone is served by the active model; for the users below `share` % the
  challenger's list is also computed and stored on `shadow.<user>.<slot>` (variant `shadow`),
  never shown, and their served lists are marked `control`.

A user's bucket is `sha256(experiment id, user token)` modulo 10,000: it depends on nothing
that changes during the experiment (not the model, the process, the replica or the time), so a
user sees one variant for the experiment's whole life, across restarts and replicas; a new
experiment (a new id) reshuffles. A visitor who signs in gets another token (their user id),
hence possibly another variant: lists are attributed by the token they were served to.

Experiments live in the `registry` bucket, `experiment.<id>`, beside the model cards: one
running per registry slot. `promote` activates the challenger through the registry's own
activation (`Registry.activate`: refused, slot unchanged, if serving cannot load it) and then
stops the experiment.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from engine.bus.registry import Registry, check_servable
from nerve_client.errors import NerveError

CONTROL = "control"
CHALLENGER = "challenger"
SHADOW_VARIANT = "shadow"
BUCKETS = 10_000
"""Buckets of the assignment hash: shares have a resolution of 0.01 %."""
KEY_PREFIX = "experiment."
DEFAULT_ATTRIBUTION_DAYS = 7.0
"""How long after a click a purchase of the clicked item by the same user counts for it."""


class ExperimentError(NerveError):
    """An experiment cannot be started, found or changed; the message says why."""


class Experiment(BaseModel):
    """One experiment as stored in the registry (`experiment.<id>`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,100}$")
    slot: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The registry slot")
    mode: Literal["split", "shadow"]
    control: str | None = Field(description="The slot's active version when it started")
    challenger: str = Field(min_length=1, max_length=128)
    share: float = Field(gt=0, le=100, description="% of users in the challenger / shadow")
    attribution_days: float = Field(default=DEFAULT_ATTRIBUTION_DAYS, gt=0, le=90)
    started_at: AwareDatetime
    stopped_at: AwareDatetime | None = None
    outcome: Literal["running", "stopped", "promoted"] = "running"

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.id


SLOT_LOCK = "experiment-slot."
"""Registry key per slot naming the experiment running there (empty: none); two concurrent
`start`s both pass the checks, and only the one whose compare-and-set on it wins is stored."""


def bucket_of(experiment_id: str, token: str) -> int:
    """The user's bucket in [0, BUCKETS) for this experiment: stable for its whole life."""
    digest = hashlib.sha256(f"{experiment_id}\x00{token}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def variant_of(experiment: Experiment, token: str) -> str | None:
    """The variant of the user's served lists (None: a shadow experiment leaves them out)."""
    inside = bucket_of(experiment.id, token) < experiment.share * BUCKETS / 100
    if experiment.mode == "split":
        return CHALLENGER if inside else CONTROL
    return CONTROL if inside else None


async def listing(registry: Registry) -> list[Experiment]:
    """Every experiment in the registry, oldest first."""
    out = []
    for key in await registry.kv.keys():
        if key.startswith(KEY_PREFIX):
            raw = await registry.kv.get(key)
            if raw is not None:
                out.append(Experiment.model_validate_json(raw))
    return sorted(out, key=lambda e: e.started_at)


async def running(registry: Registry) -> dict[str, Experiment]:
    """The running experiment of each registry slot that has one."""
    return {e.slot: e for e in await listing(registry) if e.running}


async def start(
    registry: Registry,
    slot: str,
    challenger: str,
    share: float,
    *,
    shadow: bool = False,
    attribution_days: float = DEFAULT_ATTRIBUTION_DAYS,
    now: datetime | None = None,
) -> Experiment:
    """Start an experiment of `challenger` on `slot`; `ExperimentError` (nothing stored) when
    the slot already runs one, the challenger is the active model or unknown, or the share is
    out of range; `Unservable` when serving could not load the challenger."""
    if not (0 < share < 100 or (shadow and share == 100)):
        raise ExperimentError(f"--share {share:g}: a percentage above 0 and below 100")
    lock = SLOT_LOCK + slot  # who runs on the slot: claimed by compare-and-set below
    held = await registry.kv.entry(lock)
    current = await running(registry)
    if slot in current:
        raise ExperimentError(
            f"slot {slot!r} already runs experiment {current[slot].id} "
            "(`nerve experiments stop` it first)"
        )
    raw = await registry.kv.get(f"active.{slot}")
    control = raw.decode() if raw is not None else None
    if control == challenger:
        raise ExperimentError(f"{challenger} is already the active model of slot {slot!r}")
    await registry.card(challenger)  # UnknownModel if it was never published
    await check_servable(challenger, await registry.artifact(challenger))
    now = now or datetime.now(UTC)
    experiment = Experiment(
        id=f"{slot}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}",
        slot=slot,
        mode="shadow" if shadow else "split",
        control=control,
        challenger=challenger,
        share=share,
        attribution_days=attribution_days,
        started_at=now,
    )
    [won] = await registry.kv.write_many([(lock, experiment.id.encode(), held[1] if held else 0)])
    if won is None:  # another start claimed the slot between our reads and this write
        raise ExperimentError(f"slot {slot!r}: another experiment was started meanwhile")
    await registry.kv.put(experiment.key, orjson.dumps(experiment.model_dump(mode="json")))
    return experiment


async def find(registry: Registry, which: str) -> Experiment:
    """The experiment `which` names: its id, or a registry slot's running one."""
    experiments = await listing(registry)
    for e in experiments:
        if e.id == which:
            return e
    for e in experiments:
        if e.slot == which and e.running:
            return e
    known = ", ".join(e.id for e in experiments) or "none"
    raise ExperimentError(f"no experiment {which!r} (nor one running on such a slot); {known}")


async def stop(
    registry: Registry,
    which: str,
    outcome: Literal["stopped", "promoted"] = "stopped",
    now: datetime | None = None,
) -> Experiment:
    """Stop the experiment `which` names (its users go back to the active model)."""
    experiment = await find(registry, which)
    if not experiment.running:
        raise ExperimentError(f"experiment {experiment.id} is already {experiment.outcome}")
    done = experiment.model_copy(
        update={"stopped_at": now or datetime.now(UTC), "outcome": outcome}
    )
    await registry.kv.put(done.key, orjson.dumps(done.model_dump(mode="json")))
    await registry.kv.put(SLOT_LOCK + done.slot, b"")  # the slot is free for the next one
    return done


async def promote(registry: Registry, which: str) -> Experiment:
    """Make the challenger the slot's active model (`Registry.activate`), then stop."""
    experiment = await find(registry, which)
    if not experiment.running:
        raise ExperimentError(f"experiment {experiment.id} is already {experiment.outcome}")
    await registry.activate(experiment.challenger, experiment.slot)
    return await stop(registry, experiment.id, "promoted")
