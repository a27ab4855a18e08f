"""Slots (where recommendations are shown, and how each is filled) and interest signals.

A slot names the model that serves it (the active model of a registry slot, `nerve train
--publish --slot S` / `nerve models activate`), how many items it shows, which candidates it
may show (categories, item attributes), the business rules that remove candidates, and the slot
whose list a visitor gets when this one cannot personalise (cold start, no model, no consent).

The same file defines `signals`: interest topics for CRM services (see `engine.signals`), and
`anomalies`: the detectors of `nerve run anomalies`, one `[anomalies.<name>]` each, its method
chosen by `kind` (`engine.anomalies.config`).

The configuration is TOML: `--config FILE`, else `<data dir>/slots.toml`, else the default that
ships beside this module (`default_slots.toml`, commented). Unknown keys are refused.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.anomalies.config import AnomalyDef
from nerve_client.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("default_slots.toml")
SLOT_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cap(_Strict):
    """At most `impressions` impressions of the same item per user in `days` days."""

    impressions: int = Field(ge=1, le=20, description="The profile keeps the last 20")
    days: float = Field(gt=0)


class Eligibility(_Strict):
    """A candidate matching `items` / `categories` (all candidates when both are empty) is shown
    only if the profile field `field` (a dotted path, e.g. `consent.marketing`,
    `counts.item_purchased`, `held.current-account`) satisfies `op value`."""

    name: str = Field(min_length=1, max_length=80)
    items: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    field: str = Field(min_length=1)
    op: Literal["==", "!=", ">=", ">", "<=", "<", "exists", "missing"] = "=="
    value: Any = None


class Filter(_Strict):
    """Which items are candidates at all (needs the catalogue; see `nerve catalog load`)."""

    categories: list[str] = Field(default_factory=list, description="Only these (all if empty)")
    exclude_categories: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Item attribute equals the value (or is in the list)"
    )


class Rules(_Strict):
    exclude_held: bool = Field(default=True, description="Drop what the user holds or bought")
    exclude_seen: bool = Field(default=False, description="Drop items in the recent history")
    cap: Cap | None = Field(default=None, description="Frequency cap on impressions")
    dismissed_days: float = Field(default=30, ge=0, description="Drop a dismissed item this long")
    declined_days: float = Field(default=90, ge=0, description="...declined to a CRM contact")
    contacted_days: float = Field(default=7, ge=0, description="...discussed with a CRM agent")
    max_per_category: int | None = Field(default=None, ge=1, description="Diversity")
    eligibility: list[Eligibility] = Field(default_factory=list)


class Slot(_Strict):
    model: str | None = Field(
        default=None, pattern=SLOT_NAME, description="Registry slot whose active model serves"
    )
    kind: Literal["personal", "similar"] = Field(
        default="personal",
        description="personal: scored from the profile; similar: items like the one in the "
        "request's context, else the last one the user looked at",
    )
    k: int = Field(default=5, ge=1, le=100)
    fallback: str | None = Field(default=None, pattern=SLOT_NAME)
    min_history: int = Field(
        default=1, ge=0, description="Fewer item interactions than this is a cold start"
    )
    filter: Filter = Field(default_factory=Filter)
    rules: Rules = Field(default_factory=Rules)


class Condition(_Strict):
    """Events of one kind inside the window: `type`, optionally restricted to item `category`,
    `simulator`, `items`, and a `min_value` of the event's `value` or `amount`; the condition
    holds when at least `min_count` (and at most `max_count`) such events fall in the window."""

    type: str = Field(min_length=1)
    category: list[str] = Field(default_factory=list)
    simulator: list[str] = Field(default_factory=list)
    items: list[str] = Field(default_factory=list)
    min_value: float | None = None
    min_count: int = Field(default=1, ge=1)
    max_count: int | None = Field(default=None, ge=0)


class Propensity(_Strict):
    """Also require the next-best-offer model (the active model of `slot`) to give at least
    `min` to one of `offers` for this user."""

    slot: str = Field(default="home", pattern=SLOT_NAME)
    offers: list[str] = Field(min_length=1)
    min: float = Field(ge=0, le=1)


class SignalDef(_Strict):
    """An interest topic: every condition must hold inside `window_days` (event time)."""

    window_days: float = Field(default=7, gt=0)
    cooldown_days: float = Field(default=14, ge=0, description="One signal per user and topic")
    min_score: float = Field(default=1.0, ge=0)
    conditions: list[Condition] = Field(min_length=1)
    propensity: Propensity | None = None


class SlotsConfig(_Strict):
    slots: dict[str, Slot]
    signals: dict[str, SignalDef] = Field(default_factory=dict)
    anomalies: dict[str, AnomalyDef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> SlotsConfig:
        import re

        for topic in self.signals:
            if not re.match(SLOT_NAME, topic):
                raise ValueError(f"signal topic {topic!r}: letters, digits, _ and - only")
        for detector in self.anomalies:
            if not re.match(SLOT_NAME, detector):
                raise ValueError(f"anomaly detector {detector!r}: letters, digits, _ and - only")
        for name, slot in self.slots.items():
            if not re.match(SLOT_NAME, name):
                raise ValueError(f"slot name {name!r}: letters, digits, _ and - only")
            if slot.fallback is not None and slot.fallback not in self.slots:
                raise ValueError(f"slots.{name}.fallback: no slot {slot.fallback!r}")
            seen, at = {name}, slot.fallback
            while at is not None:
                if at in seen:
                    raise ValueError(f"slots.{name}.fallback: a cycle through {at!r}")
                seen.add(at)
                at = self.slots[at].fallback
        return self

    def model_slot(self, name: str) -> str:
        """The registry slot whose active model serves slot `name`."""
        return self.slots[name].model or name

    def registry_slots(self) -> set[str]:
        return {self.model_slot(n) for n in self.slots}


def load_slots(path: Path | None = None, data_dir: Path | None = None) -> tuple[SlotsConfig, Path]:
    """The slots configuration and the file it came from (see the module docstring)."""
    if path is None:
        candidate = data_dir / "slots.toml" if data_dir is not None else None
        path = candidate if candidate is not None and candidate.exists() else DEFAULT_PATH
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return SlotsConfig.model_validate(raw), path
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in e["loc"])
        raise ConfigError(f"{path}: {where}: {e['msg']}") from None
