"""The stored shape of a profile: the pydantic schema that validates what is read back and
exports JSON Schema (the projection itself works on plain dicts of this shape)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROFILE_VERSION = 1


class RecentItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    type: str
    time: int = Field(description="Unix ms")
    seq: int


class Held(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: int = Field(description="Unix ms of the first acquisition")
    value: float = 0.0
    source: str = Field(description="item_purchased or crm")


class SimulatorUse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    last_time: int
    last_seq: int
    last_item: str | None = None
    last_parameters: dict[str, Any]


class OfferStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shown: int = 0
    clicked: int = 0
    dismissed: int = 0
    shown_times: list[int] = Field(default_factory=list, description="Newest first, bounded")
    last_clicked: int | None = None
    last_dismissed: int | None = None


class CrmContact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: str
    channel: str
    time: int
    seq: int
    contacts: int


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    analytics: bool | None = None
    personalization: bool | None = None
    marketing: bool | None = None
    time: int = 0
    seq: int = 0


class StreamPosition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max: int = Field(default=0, description="Highest applied stream sequence")
    floor: int = Field(default=0, description="Every event at or below is applied")
    applied: list[int] = Field(default_factory=list, description="Applied above the floor")


class Profile(BaseModel):
    """A user's profile as stored in the `profiles` bucket (times are Unix milliseconds)."""

    model_config = ConfigDict(extra="forbid")
    version: int = PROFILE_VERSION
    key: str = Field(description="The subject token of the user (see nerve_client.subjects)")
    user_id: str | None = None
    anonymous_id: str | None = None
    anonymous_ids: list[str] = Field(default_factory=list, description="Linked by login")
    stitched: list[str] = Field(
        default_factory=list, description="Anonymous ids whose history this profile holds"
    )
    identified_as: str | None = Field(
        default=None, description="Of an anonymous profile: the user id its history went to"
    )
    first_seen: int | None = None
    last_seen: int | None = None
    counts: dict[str, int] = Field(default_factory=dict, description="Events by type")
    categories: dict[str, int] = Field(default_factory=dict, description="Events by category")
    recent_items: list[RecentItem] = Field(default_factory=list)
    held: dict[str, Held] = Field(default_factory=dict, description="Products held")
    simulators: dict[str, SimulatorUse] = Field(default_factory=dict)
    offers: dict[str, OfferStats] = Field(default_factory=dict, description="For caps")
    crm: dict[str, CrmContact] = Field(default_factory=dict, description="Last contact per offer")
    consent: Consent = Field(default_factory=Consent)
    positions: dict[str, StreamPosition] = Field(default_factory=dict)
