"""An experiment's result per variant, from decoded events: pure, testable without a broker.

Attribution. Every list the recommender stores while an experiment runs carries the
experiment's id and the variant it was computed for (`recommendations_updated` properties
`experiment`, `variant`; shadow lists `variant = "shadow"`, on `shadow.<user>.<slot>`). An
ACTIVITY event is attributed through its `recommendation_id` to that list's variant:

* **impressions**: `recommendation_shown` events; a **shown list** is a recommendation id with
  at least one (or with a click: a click proves it was shown);
* **clicks**: `recommendation_clicked` events; a **clicked list** has at least one;
* **conversions** and **value**: an `item_purchased` of an item by the user who clicked it in
  a list of the experiment, at most `attribution_days` (the experiment's, default 7) after
  that click; the latest such click gets it (last touch), and each click converts once. Value
  is the purchase's `value` (0 when it has none).
* **hit rate** (shadow experiments, and the control lists beside them): a list is a hit when
  its user viewed, added, clicked or bought one of its items within the attribution window
  after the list was made. A shadow list is never shown, so this is what the challenger would
  have offered against what the user then did; the control lists were shown, which helps their
  hits (exposure): read a shadow's hit rate as a lower bound.

Statistics. CTR = clicked lists / shown lists, conversion rate = converted lists / shown lists,
each with its **Wilson score interval** (95 %). The difference of two rates (challenger minus
control; shadow minus control for hit rates) is tested with the **two-proportion z-test**
(pooled standard error, two-sided) and reported with the unpooled 95 % Wald interval of the
difference; `significant` means p < 0.05. Lists of one user are not independent trials (a user
sees several), so the intervals are somewhat narrower than the truth: prefer a result that
stays significant for several days and has many users per variant.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.experiments.spec import CHALLENGER, CONTROL, SHADOW_VARIANT, Experiment

Z95 = 1.959963984540054
"""The 97.5 % quantile of the standard normal: two-sided 95 %."""
DAY_MS = 86_400_000
INTERACTIONS = frozenset(
    {"item_viewed", "item_added_to_cart", "item_purchased", "recommendation_clicked"}
)
"""What counts as doing something with an item (shadow hit rate)."""
ACTION_TYPES = tuple(sorted({"recommendation_shown", *INTERACTIONS}))
"""Every ACTIVITY type the report reads."""


@dataclass(frozen=True, slots=True)
class ListSeen:
    """A list of the experiment: a served one (`control` / `challenger`) or a shadow one."""

    rid: str
    token: str
    slot: str
    variant: str
    time_ms: int
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """An ACTIVITY event the report reads, decoded."""

    type: str
    token: str
    time_ms: int
    rid: str | None = None
    item: str | None = None
    value: float = 0.0


class Rate(BaseModel):
    """`successes` of `trials`, the rate and its Wilson 95 % interval (None: no trials)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    successes: int
    trials: int
    rate: float | None
    low: float | None
    high: float | None


class VariantResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    variant: str
    users: int
    lists: int
    impressions: int
    clicks: int
    conversions: int
    value: float
    ctr: Rate
    conversion_rate: Rate
    hit_rate: Rate


class Comparison(BaseModel):
    """`variant` minus `against` on `metric`: the two-proportion z-test, two-sided."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: Literal["ctr", "conversion_rate", "hit_rate"]
    variant: str
    against: str
    difference: float | None
    low: float | None
    high: float | None
    z: float | None
    p_value: float | None
    significant: bool


class ExperimentReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    experiment: Experiment
    variants: list[VariantResult]
    comparisons: list[Comparison]
    method: str = (
        "Wilson 95% interval per rate; difference: two-proportion z-test (pooled, two-sided), "
        "95% Wald interval; significant when p < 0.05"
    )


def wilson(successes: int, trials: int, z: float = Z95) -> Rate:
    """The Wilson score interval of `successes` / `trials`."""
    if trials <= 0:
        return Rate(successes=successes, trials=trials, rate=None, low=None, high=None)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return Rate(
        successes=successes,
        trials=trials,
        rate=p,
        low=max(0.0, centre - half),
        high=min(1.0, centre + half),
    )


def two_proportions(
    metric: Literal["ctr", "conversion_rate", "hit_rate"],
    variant: str,
    a: Rate,
    against: str,
    b: Rate,
    z: float = Z95,
) -> Comparison:
    """`a` minus `b`: pooled two-proportion z-test (two-sided) and the 95 % Wald interval."""
    none = Comparison(
        metric=metric,
        variant=variant,
        against=against,
        difference=None,
        low=None,
        high=None,
        z=None,
        p_value=None,
        significant=False,
    )
    if a.trials <= 0 or b.trials <= 0 or a.rate is None or b.rate is None:
        return none
    diff = a.rate - b.rate
    se_unpooled = math.sqrt(a.rate * (1 - a.rate) / a.trials + b.rate * (1 - b.rate) / b.trials)
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if se == 0:  # both 0 % or both 100 %: no evidence of a difference
        return none.model_copy(update={"difference": diff, "low": diff, "high": diff})
    score = diff / se
    p = math.erfc(abs(score) / math.sqrt(2))
    return Comparison(
        metric=metric,
        variant=variant,
        against=against,
        difference=diff,
        low=diff - z * se_unpooled,
        high=diff + z * se_unpooled,
        z=score,
        p_value=p,
        significant=p < 0.05,
    )


@dataclass
class _Tally:
    users: set[str] = field(default_factory=set)
    lists: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    value: float = 0.0
    shown: set[str] = field(default_factory=set)
    clicked: set[str] = field(default_factory=set)
    converted: set[str] = field(default_factory=set)
    hits: int = 0


def tally(
    experiment: Experiment, lists: Iterable[ListSeen], actions: Iterable[Action]
) -> ExperimentReport:
    """The experiment's result from its lists and the ACTIVITY events (any order)."""
    window = int(experiment.attribution_days * DAY_MS)
    by_rid = {item.rid: item for item in lists}
    names = [CONTROL, SHADOW_VARIANT if experiment.mode == "shadow" else CHALLENGER]
    tallies: dict[str, _Tally] = {v: _Tally() for v in names}
    for seen in by_rid.values():
        t = tallies.setdefault(seen.variant, _Tally())
        t.users.add(seen.token)
        t.lists += 1
    ordered = sorted(actions, key=lambda a: a.time_ms)
    _attribute(by_rid, ordered, tallies, window)
    _hits(by_rid.values(), ordered, tallies, window)
    variants = [_result(v, t) for v, t in tallies.items()]
    return ExperimentReport(
        experiment=experiment, variants=variants, comparisons=_compare(experiment, variants)
    )


def _attribute(
    by_rid: Mapping[str, ListSeen],
    ordered: list[Action],
    tallies: dict[str, _Tally],
    window: int,
) -> None:
    """Impressions, clicks and last-touch conversions, in time order."""
    clicks: dict[tuple[str, str], tuple[int, str, str]] = {}  # (token, item) -> last click
    for a in ordered:
        seen = by_rid.get(a.rid or "") if a.rid else None
        if a.type == "recommendation_shown" and seen is not None:
            t = tallies[seen.variant]
            t.impressions += 1
            t.shown.add(seen.rid)
        elif a.type == "recommendation_clicked" and seen is not None:
            t = tallies[seen.variant]
            t.clicks += 1
            t.clicked.add(seen.rid)
            t.shown.add(seen.rid)
            if a.item is not None:
                clicks[(a.token, a.item)] = (a.time_ms, seen.variant, seen.rid)
        elif a.type == "item_purchased" and a.item is not None:
            click = clicks.get((a.token, a.item))
            if click is not None and 0 <= a.time_ms - click[0] <= window:
                del clicks[(a.token, a.item)]
                t = tallies[click[1]]
                t.conversions += 1
                t.value += a.value
                t.converted.add(click[2])


def _hits(
    lists: Iterable[ListSeen], ordered: list[Action], tallies: dict[str, _Tally], window: int
) -> None:
    """Lists whose user did something with one of their items within `window` after them."""
    done: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for a in ordered:
        if a.type in INTERACTIONS and a.item is not None:
            done[a.token][a.item].append(a.time_ms)  # ascending: `ordered` is by time
    for seen in lists:
        mine = done.get(seen.token)
        if not mine:
            continue
        end = seen.time_ms + window
        if any(any(seen.time_ms <= t <= end for t in mine.get(item, ())) for item in seen.items):
            tallies[seen.variant].hits += 1


def _result(variant: str, t: _Tally) -> VariantResult:
    return VariantResult(
        variant=variant,
        users=len(t.users),
        lists=t.lists,
        impressions=t.impressions,
        clicks=t.clicks,
        conversions=t.conversions,
        value=round(t.value, 6),
        ctr=wilson(len(t.clicked), len(t.shown)),
        conversion_rate=wilson(len(t.converted), len(t.shown)),
        hit_rate=wilson(t.hits, t.lists),
    )


def _compare(experiment: Experiment, variants: list[VariantResult]) -> list[Comparison]:
    by = {v.variant: v for v in variants}
    control = by[CONTROL]
    if experiment.mode == "shadow":
        shadow = by[SHADOW_VARIANT]
        return [
            two_proportions("hit_rate", SHADOW_VARIANT, shadow.hit_rate, CONTROL, control.hit_rate)
        ]
    challenger = by[CHALLENGER]
    return [
        two_proportions("ctr", CHALLENGER, challenger.ctr, CONTROL, control.ctr),
        two_proportions(
            "conversion_rate",
            CHALLENGER,
            challenger.conversion_rate,
            CONTROL,
            control.conversion_rate,
        ),
        two_proportions("hit_rate", CHALLENGER, challenger.hit_rate, CONTROL, control.hit_rate),
    ]


def list_of(experiment_id: str, token: str, event: Mapping[str, Any]) -> ListSeen | None:
    """A stored list (decoded `recommendations_updated`) when it belongs to the experiment."""
    props = event.get("properties") or {}
    if props.get("experiment") != experiment_id or not props.get("variant"):
        return None
    return ListSeen(
        rid=str(props.get("recommendation_id") or event.get("id")),
        token=token,
        slot=str(props.get("slot")),
        variant=str(props["variant"]),
        time_ms=time_ms(event.get("time")),
        items=tuple(str(i["item_id"]) for i in props.get("items") or ()),
    )


def action_of(token: str, event: Mapping[str, Any]) -> Action | None:
    """An ACTIVITY event the report reads (None for any other)."""
    etype = event.get("type")
    if etype not in ACTION_TYPES:
        return None
    props = event.get("properties") or {}
    value = props.get("value")
    return Action(
        type=str(etype),
        token=token,
        time_ms=time_ms(event.get("time")),
        rid=props.get("recommendation_id"),
        item=event.get("item_id"),
        value=float(value) if isinstance(value, int | float) else 0.0,
    )


def time_ms(value: Any) -> int:
    """Milliseconds since the epoch of an RFC 3339 time (0 when missing)."""
    if not value:
        return 0
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
