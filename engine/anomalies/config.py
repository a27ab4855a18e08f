"""The detectors' settings: one `[anomalies.<name>]` section of the slots file each.

`kind` chooses the method; every other key is a parameter of that method (unknown keys are
refused). The defaults are written here once; `default_slots.toml` shows each of them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ContextName = Literal["locale", "user_agent"]

AMOUNT_TYPES = ("item_purchased", "simulator_used")
"""The types whose amount `unusual_value` and `new_context` read (`value`, `amount`)."""


_CONTEXTS: list[ContextName] = ["locale", "user_agent"]


class _Detector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cooldown_minutes: float = Field(
        default=60, ge=0, description="At most one anomaly per detector and subject in this time"
    )

    @property
    def horizon_minutes(self) -> float:
        """How much of the log rebuilds this detector's state on start."""
        raise NotImplementedError


class RateBurst(_Detector):
    """Events of `types` by one user in the last `window_seconds`, against that user's own
    per-window counts: fires when count >= `min_events` and the robust z-score
    (count - median) / max(1.4826 MAD, `min_spread`) >= `threshold`. The baseline is the
    user's last `history` active windows (windows with at least one such event) of the last
    `history_minutes`; while the user has fewer than `min_history`, the missing ones count as
    `prior` events each (a typical visitor)."""

    kind: Literal["rate_burst"]
    types: list[str] = Field(default_factory=lambda: ["item_viewed"], min_length=1)
    window_seconds: float = Field(default=60, gt=0)
    history: int = Field(default=30, ge=1, le=500)
    history_minutes: float = Field(default=1440, gt=0)
    min_history: int = Field(default=5, ge=0)
    prior: float = Field(default=1, ge=0)
    min_events: int = Field(default=10, ge=1)
    min_spread: float = Field(default=1.0, gt=0)
    threshold: float = Field(default=6.0, gt=0)

    @property
    def horizon_minutes(self) -> float:
        return self.history_minutes


class UnusualValue(_Detector):
    """The amount of an `item_purchased` (`value`) or `simulator_used` (`amount`), as
    log(1 + amount), against the user's own last `user_history` amounts in the same segment
    and the segment's last `segment_history` (a segment is the simulator, or the item's
    category as the log's item views name it, else the item). Fires when the robust z-score is
    >= `threshold` against the segment (at least `min_segment` amounts) and, once the user has
    `min_user` amounts there, against the user's too; `direction` high: only amounts above."""

    kind: Literal["unusual_value"]
    types: list[str] = Field(default_factory=lambda: list(AMOUNT_TYPES), min_length=1)
    user_history: int = Field(default=20, ge=1, le=500)
    segment_history: int = Field(default=500, ge=10, le=5000)
    min_user: int = Field(default=5, ge=1)
    min_segment: int = Field(default=30, ge=5)
    min_spread: float = Field(default=0.1, gt=0, description="Floor of the spread in log units")
    threshold: float = Field(default=5.0, gt=0)
    direction: Literal["high", "both"] = "high"
    history_days: float = Field(default=30, gt=0)

    @property
    def horizon_minutes(self) -> float:
        return self.history_days * 1440


class NewContext(_Detector):
    """An event of a user from a `context` value (locale, user-agent family: browser and OS)
    never seen on that user's earlier events, once the user has `min_history` events that name
    it, followed within `window_minutes` by a high-value action: an amount (`value`, `amount`)
    of at least `min_value` on one of `actions`. Evidence: both events. Score = amount /
    `min_value` (fires at 1)."""

    kind: Literal["new_context"]
    context: list[ContextName] = Field(default_factory=lambda: _CONTEXTS.copy(), min_length=1)
    actions: list[str] = Field(default_factory=lambda: list(AMOUNT_TYPES), min_length=1)
    min_value: float = Field(default=10_000, gt=0)
    window_minutes: float = Field(default=30, gt=0)
    min_history: int = Field(default=3, ge=1)
    history_days: float = Field(default=30, gt=0)

    @property
    def horizon_minutes(self) -> float:
        return self.history_days * 1440


class SiteRateShift(_Detector):
    """Site-wide count per `window_minutes` of `types` on `stream` (ACTIVITY: every type when
    empty; DEADLETTER: every dead letter, `types` then names sources), against the last
    `history` windows (empty ones count as 0): robust z = (count - median) /
    max(1.4826 MAD, `min_spread`). Up: fires at the event that takes the current window to
    z >= `threshold` and at least `min_count`. Down (`direction` both or down): at the first
    event after a window whose z <= -`threshold` while the median is at least `min_count`.
    Time of day: with `seasonal_days` > 0 the band is the windows of the same hour of day over
    the previous `seasonal_days` days (a site is busier at noon than at 3 am, and its hourly
    steps are not shifts); until a full hour of that hour of day is in the history (the first
    day after a start with less history) the detector does not judge that hour: the last
    `history` windows of a rising morning are no band for it (`seasonal_fallback = true`
    judges it against them instead: sooner alarms, daily ramps among them). Breadth:
    each user (subject token) counts at most `max_per_user` events in a window (0: no cap), so
    one user's burst, which `rate_burst` is for, is not a shift of the site."""

    kind: Literal["site_rate_shift"]
    stream: Literal["ACTIVITY", "DEADLETTER"] = "ACTIVITY"
    types: list[str] = Field(default_factory=list)
    window_minutes: float = Field(default=5, gt=0)
    history: int = Field(default=12, ge=3, le=2000)
    min_count: int = Field(default=20, ge=1)
    min_spread: float = Field(default=2.0, gt=0)
    threshold: float = Field(default=6.0, gt=0)
    direction: Literal["up", "down", "both"] = "up"
    seasonal_days: int = Field(default=7, ge=0, le=28)
    seasonal_fallback: bool = False
    max_per_user: int = Field(default=5, ge=0)

    @property
    def horizon_minutes(self) -> float:
        return max(self.window_minutes * (self.history + 1), self.seasonal_days * 24 * 60.0)


AnomalyDef = Annotated[
    RateBurst | UnusualValue | NewContext | SiteRateShift, Field(discriminator="kind")
]
"""One `[anomalies.<name>]` section, by its `kind`."""
KINDS = ("rate_burst", "unusual_value", "new_context", "site_rate_shift")
