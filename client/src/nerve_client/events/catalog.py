"""The event catalog: the typed `properties` of every event type, one pydantic model each.

Each model names its `type`, its `schema_version`, what it needs on the envelope (`requires`:
an item, a known user) and its unknown-field policy. Every type refuses unknown fields
(`extra="forbid"`) except `page_viewed`, whose properties a site may annotate freely.
A new version of a type is a new class with the next `schema_version`; old versions stay so that
old events still validate when the log is replayed.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Id = Field(min_length=1, max_length=128)
Money = Field(ge=0, le=1e12)


class Properties(BaseModel):
    """Base of every properties model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type_name: ClassVar[str]
    version: ClassVar[int] = 1
    requires: ClassVar[frozenset[str]] = frozenset()
    """Envelope fields this type cannot do without: `item_id`, `user_id`, `anonymous_id`."""
    system: ClassVar[bool] = False
    """About the system, not a user: no user id, stored under the system token."""
    output: ClassVar[bool] = False
    """Produced by Nerve itself (stored outside ACTIVITY); refused from producers."""
    userless: ClassVar[bool] = False
    """May name no user at all (a site-wide anomaly); otherwise user_id or anonymous_id."""
    summary: ClassVar[str] = ""


class PageViewed(Properties):
    model_config = ConfigDict(extra="allow", frozen=True)
    type_name = "page_viewed"
    summary = "A page of the site was displayed."

    page_type: Literal[
        "home", "category", "product", "search", "simulator", "account", "article", "other"
    ] = "other"
    title: str | None = Field(default=None, max_length=300)
    path: str | None = Field(default=None, max_length=2000)


class ItemViewed(Properties):
    type_name = "item_viewed"
    requires = frozenset({"item_id"})
    summary = "A product or offer page was viewed; carries the attribution of a recommendation."

    category: str | None = Field(default=None, max_length=64)
    recommendation_id: str | None = Field(default=None, max_length=128)
    position: int | None = Field(default=None, ge=0, le=1000)


class SearchPerformed(Properties):
    type_name = "search_performed"
    summary = "The visitor searched the site."

    query: str = Field(min_length=1, max_length=500)
    results_count: int | None = Field(default=None, ge=0)
    category: str | None = Field(default=None, max_length=64)


Simulator = Literal["loan", "mortgage", "car_loan", "investment", "savings", "pension", "insurance"]
_NEEDS_TERM = {"loan", "mortgage", "car_loan"}


class SimulatorUsed(Properties):
    type_name = "simulator_used"
    summary = "A loan / investment / insurance simulator was run with these parameters."

    simulator: Simulator
    amount: float = Field(gt=0, le=1e9)
    term_months: int | None = Field(default=None, ge=1, le=600)
    annual_rate: float | None = Field(default=None, ge=0, le=100)
    monthly_payment: float | None = Field(default=None, ge=0, le=1e9)
    monthly_contribution: float | None = Field(default=None, ge=0, le=1e9)
    risk_profile: Literal["low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _term_for_credit(self) -> SimulatorUsed:
        if self.simulator in _NEEDS_TERM and self.term_months is None:
            raise ValueError(f"term_months is required for the {self.simulator} simulator")
        return self


class ItemAddedToCart(Properties):
    type_name = "item_added_to_cart"
    requires = frozenset({"item_id"})
    summary = "A product was put in the cart or an application was started."

    quantity: int = Field(default=1, ge=1, le=10_000)
    price: float | None = Money


class ItemPurchased(Properties):
    type_name = "item_purchased"
    requires = frozenset({"item_id"})
    summary = "A product was bought or acquired (account opened, loan signed, fund subscribed)."

    value: float = Money
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    quantity: int = Field(default=1, ge=1, le=10_000)
    order_id: str | None = Field(default=None, max_length=128)


class ItemRated(Properties):
    type_name = "item_rated"
    requires = frozenset({"item_id"})
    summary = "An explicit rating (imported rating data sets such as MovieLens use it)."

    rating: float = Field(ge=0, le=10)


class RecommendationShown(Properties):
    type_name = "recommendation_shown"
    summary = "Items of a served list were seen (half visible for one second in a visible tab)."

    class Shown(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        item_id: str = Id
        position: int = Field(ge=0, le=1000)

    recommendation_id: str = Id
    slot: str = Field(min_length=1, max_length=64)
    items: list[Shown] = Field(min_length=1, max_length=100)


class RecommendationClicked(Properties):
    type_name = "recommendation_clicked"
    requires = frozenset({"item_id"})
    summary = "An item of a served list was clicked."

    recommendation_id: str = Id
    slot: str = Field(min_length=1, max_length=64)
    position: int = Field(ge=0, le=1000)


class OfferDismissed(Properties):
    type_name = "offer_dismissed"
    requires = frozenset({"item_id"})
    summary = "The visitor dismissed an offer; it is suppressed for a while."

    recommendation_id: str | None = Field(default=None, max_length=128)
    slot: str | None = Field(default=None, max_length=64)
    position: int | None = Field(default=None, ge=0, le=1000)
    reason: Literal["not_interested", "already_have", "too_often", "other"] | None = None


class UserIdentified(Properties):
    type_name = "user_identified"
    requires = frozenset({"user_id", "anonymous_id"})
    summary = "An anonymous visitor was identified as a known user (links the two ids)."

    method: Literal["login", "signup", "token"] = "login"


class ConsentUpdated(Properties):
    type_name = "consent_updated"
    summary = "The visitor's consent choices changed."

    analytics: bool
    personalization: bool
    marketing: bool


class CrmContactLogged(Properties):
    type_name = "crm_contact_logged"
    requires = frozenset({"user_id"})
    summary = "A CRM service logged a contact with the customer and its outcome (item = offer)."

    channel: Literal["phone", "email", "branch", "chat", "video", "letter"]
    outcome: Literal["interested", "declined", "converted", "no_answer", "callback"]
    agent_id: str | None = Field(default=None, max_length=128)
    signal_id: str | None = Field(default=None, max_length=128)


class UserForgotten(Properties):
    type_name = "user_forgotten"
    system = True
    summary = "A user's data was erased (`nerve forget`); carries no personal data."

    erasure_id: str = Id
    erased: dict[str, int] = Field(description="Messages erased per stream or bucket")


class ModelPublished(Properties):
    type_name = "model_published"
    system = True
    summary = "A trained model became the active one for a slot (artifact in the models store)."

    model_version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    slot: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    model: str = Field(min_length=1, max_length=64)
    metrics: dict[str, float] = Field(default_factory=dict)


class RecommendationsUpdated(Properties):
    type_name = "recommendations_updated"
    requires = frozenset()
    output = True
    summary = (
        "A user's list for a slot changed (published by the recommender on reco.<user>.<slot>)."
    )

    class Entry(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        item_id: str = Id
        position: int = Field(ge=0, le=1000)
        score: float
        reason: str = Field(max_length=300)

    recommendation_id: str = Id
    slot: str = Field(min_length=1, max_length=64)
    items: list[Entry] = Field(max_length=100)
    activity_seq: int = Field(ge=0, description="The highest ACTIVITY sequence it reflects")
    crm_seq: int = Field(ge=0, description="The highest CRM sequence it reflects")
    model_version: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=64)
    served_by: str | None = Field(default=None, max_length=64, description="Fallback slot used")
    fallback: Literal["cold_start", "no_model", "no_consent"] | None = None
    anchor: str | None = Field(default=None, max_length=128, description="Item it is similar to")
    experiment: str | None = Field(
        default=None, max_length=100, description="The experiment it is part of (nerve experiments)"
    )
    variant: Literal["control", "challenger", "shadow"] | None = Field(
        default=None,
        description="Its variant in `experiment`: made with the active model (control), with the "
        "challenger, or with the challenger in shadow (on shadow.<user>.<slot>, never shown)",
    )


class InterestSignal(Properties):
    type_name = "interest_signal"
    requires = frozenset({"user_id"})
    output = True
    summary = (
        "A customer shows interest in a topic (published by signals on signals.<topic>.<user>)."
    )

    class Evidence(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        event_id: str = Id
        stream: Literal["ACTIVITY", "CRM"]
        seq: int = Field(ge=1)
        type: str = Field(max_length=64)
        time: str = Field(max_length=40)
        item_id: str | None = Field(default=None, max_length=128)

    topic: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    score: float = Field(ge=0)
    rule: str = Field(max_length=500, description="The conditions that held")
    evidence: list[Evidence] = Field(min_length=1, max_length=100)
    decided_at: str = Field(max_length=40, description="Time of the deciding event")
    window_days: float = Field(gt=0)
    consent: dict[str, bool] = Field(default_factory=dict)
    offer: str | None = Field(default=None, max_length=128, description="The item it is about")


class AnomalyDetected(Properties):
    type_name = "anomaly_detected"
    output = True
    userless = True
    summary = (
        "Something unusual about a user or the whole site (published by anomalies on"
        " anomalies.<detector>.<user>, or .~site)."
    )

    class Evidence(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        event_id: str = Id
        stream: Literal["ACTIVITY", "CRM", "DEADLETTER"]
        seq: int = Field(ge=1)
        type: str = Field(max_length=64, description="Event type (dead letters: their source)")
        time: str = Field(max_length=40)
        item_id: str | None = Field(default=None, max_length=128)

    class Baseline(BaseModel):
        """What the observed value was compared with."""

        model_config = ConfigDict(extra="forbid", frozen=True)
        of: Literal["user", "segment", "site"]
        method: Literal["median_mad", "seen_before"]
        window: str = Field(max_length=200, description="Which observations, in words")
        samples: int = Field(ge=0)
        median: float | None = None
        mad: float | None = Field(default=None, ge=0, description="Scaled: 1.4826 x MAD")
        spread: float | None = Field(default=None, ge=0, description="max(mad, the floor)")
        seen: list[str] = Field(default_factory=list, max_length=50)
        segment: str | None = Field(default=None, max_length=200)

    detector: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    kind: Literal["rate_burst", "unusual_value", "new_context", "site_rate_shift"]
    subject: Literal["user", "site"]
    score: float = Field(description="Robust z-score (new_context: value / min_value)")
    value: float = Field(description="What was observed: a count, an amount")
    threshold: float = Field(description="The score at which the detector fires")
    baseline: list[Baseline] = Field(min_length=1, max_length=4)
    evidence: list[Evidence] = Field(min_length=1, max_length=100)
    decided_at: str = Field(max_length=40, description="Time of the deciding event")
    description: str = Field(max_length=500, description="The finding in words")
    event_type: str | None = Field(default=None, max_length=64, description="What was counted")


CATALOG: tuple[type[Properties], ...] = (
    PageViewed,
    ItemViewed,
    SearchPerformed,
    SimulatorUsed,
    ItemAddedToCart,
    ItemPurchased,
    ItemRated,
    RecommendationShown,
    RecommendationClicked,
    OfferDismissed,
    UserIdentified,
    ConsentUpdated,
    CrmContactLogged,
    UserForgotten,
    ModelPublished,
    RecommendationsUpdated,
    InterestSignal,
    AnomalyDetected,
)
