"""Next-best-offer: a propensity model per offer on profile features, and a policy that ranks the
eligible offers by expected value (propensity x value).

Features are read from a profile-shaped dict (the `profiles` projection: counts by event type
and category, simulator use, products held, last seen), so the same function serves training
(profiles rebuilt at a cut-off) and serving (the live profile). Each offer gets a logistic
regression (scikit-learn) fitted on "did the user acquire it within the horizon"; offers with too
few positives keep their base rate. The artifact is the coefficient matrix and JSON, no pickle.

Eligibility and suppression come before ranking: an offer the user holds, dismissed in the last
`dismissed_days`, discussed with a CRM agent in the last `contacted_days` (whatever the outcome),
or declined to a CRM contact in the last `declined_days`, is never offered.

`NextBestOffer` satisfies `models.scorer.Scorer`: its candidates are the offers, its score the
expected value, its explanation the strongest feature (`drivers`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.artifact import FORMAT_VERSION, register
from models.scorer import Scored

DAY_MS = 86_400_000


class NBOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    c: float = Field(default=0.05, gt=0, description="Inverse L2 strength of each regression")
    min_positives: int = Field(default=5, ge=1, description="Below this, use the base rate")
    dismissed_days: float = Field(default=30, ge=0)
    declined_days: float = Field(default=90, ge=0)
    contacted_days: float = Field(
        default=7, ge=0, description="After any CRM contact about an offer, leave it to the CRM"
    )
    seed: int = 0


def feature_names(profiles: Iterable[Mapping[str, Any]], offers: Sequence[str]) -> list[str]:
    """The feature vocabulary seen in `profiles`, in a stable order."""
    types, cats, sims = set(), set(), set()
    for p in profiles:
        types |= set(p.get("counts", {}))
        cats |= set(p.get("categories", {}))
        sims |= set(p.get("simulators", {}))
    return (
        [f"count:{t}" for t in sorted(types)]
        + [f"cat:{c}" for c in sorted(cats)]
        + [f"sim:{s}" for s in sorted(sims)]
        + [f"held:{o}" for o in offers]
        + [f"seen:{o}" for o in offers]
        + [f"simulated:{o}" for o in offers]
        + ["recency_days"]
    )


def features(profile: Mapping[str, Any], names: Sequence[str], now_ms: int) -> np.ndarray:
    """The feature vector of one profile: log1p counts by type, category and simulator, held
    flags, views of each offer among the recent items, the offer last simulated, and days since
    last seen."""
    out = np.zeros(len(names), dtype=np.float64)
    counts, cats = profile.get("counts", {}), profile.get("categories", {})
    sims, held = profile.get("simulators", {}), profile.get("held", {})
    seen: dict[str, int] = {}
    for r in profile.get("recent_items", []):
        seen[r["item_id"]] = seen.get(r["item_id"], 0) + 1
    simulated = {s.get("last_item") for s in sims.values()}
    for i, name in enumerate(names):
        kind, _, key = name.partition(":")
        if kind == "count":
            out[i] = math.log1p(counts.get(key, 0))
        elif kind == "cat":
            out[i] = math.log1p(cats.get(key, 0))
        elif kind == "sim":
            out[i] = math.log1p(sims.get(key, {}).get("count", 0))
        elif kind == "held":
            out[i] = 1.0 if key in held else 0.0
        elif kind == "seen":
            out[i] = math.log1p(seen.get(key, 0))
        elif kind == "simulated":
            out[i] = 1.0 if key in simulated else 0.0
        elif name == "recency_days":
            last = profile.get("last_seen")
            out[i] = math.log1p(max(0, now_ms - last) / DAY_MS) if last else 5.0
    return out


class NextBestOffer:
    name = "nbo"

    def __init__(self, config: NBOConfig | None = None, **params: Any) -> None:
        self.config = config or NBOConfig(**params)
        self.offers: list[str] = []
        self.values: dict[str, float] = {}
        self.names: list[str] = []
        self.coef = np.zeros((0, 0))
        self.intercept = np.zeros(0)

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        names: Sequence[str],
        offers: Sequence[str],
        values: Mapping[str, float],
    ) -> NextBestOffer:
        """`x`: users x features; `y`: users x offers, 1 where the user acquired the offer."""
        from sklearn.linear_model import LogisticRegression

        if x.shape[0] == 0:
            raise ValueError("cannot fit on no users")
        self.offers, self.names = list(offers), list(names)
        self.values = {o: float(values.get(o, 0.0)) for o in self.offers}
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-9
        z = (x - self.mean) / self.scale
        self.coef = np.zeros((len(self.offers), x.shape[1]))
        self.intercept = np.zeros(len(self.offers))
        for j in range(len(self.offers)):
            positives = int(y[:, j].sum())
            rate = (positives + 0.5) / (len(y) + 1.0)
            if positives < self.config.min_positives or positives == len(y):
                self.intercept[j] = math.log(rate / (1 - rate))
                continue
            lr = LogisticRegression(C=self.config.c, max_iter=500)
            lr.fit(z, y[:, j])
            self.coef[j], self.intercept[j] = lr.coef_[0], lr.intercept_[0]
        return self

    def propensity(self, x: np.ndarray) -> np.ndarray:
        """Probability of acquiring each offer (users x offers)."""
        z = (np.atleast_2d(x) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef.T + self.intercept)))

    def expected_values(self, profile: Mapping[str, Any], now_ms: int) -> np.ndarray:
        """Propensity x value of every offer (in `self.offers` order), before any rule."""
        p = self.propensity(features(profile, self.names, now_ms))[0]
        return p * np.asarray([self.values[o] for o in self.offers])

    def drivers(
        self, profile: Mapping[str, Any], now_ms: int, offers: Iterable[str]
    ) -> dict[str, str]:
        """For each offer, the feature that raises its propensity most for this profile (e.g.
        `sim:loan`), if any raises it at all: the basis of a recommendation's reason."""
        z = (features(profile, self.names, now_ms) - self.mean) / self.scale
        index = {o: j for j, o in enumerate(self.offers)}
        out = {}
        for offer in offers:
            j = index.get(offer)
            if j is None:
                continue
            contrib = self.coef[j] * z
            best = int(np.argmax(contrib)) if len(contrib) else -1
            if best >= 0 and contrib[best] > 0:
                out[offer] = self.names[best]
        return out

    # -- the Scorer protocol (what serving calls) ----------------------------------------------
    def candidates(self) -> np.ndarray:
        """The offers, in the order of every score array."""
        return np.asarray(self.offers, dtype=object)

    def score(
        self, profile: Mapping[str, Any], history: Mapping[str, float], now_ms: int
    ) -> np.ndarray:
        """`expected_values`: this model reads the profile's features, not the history."""
        return self.expected_values(profile, now_ms)

    def score_like(self, anchor: str) -> None:
        """None: offers are ranked for a user, never by likeness to an item."""
        return None

    def explain(
        self,
        profile: Mapping[str, Any],
        history: Mapping[str, float],
        items: Sequence[str],
        now_ms: int,
    ) -> dict[str, str]:
        """`drivers`: the feature (`kind:key`) that raises each offer's propensity most."""
        return self.drivers(profile, now_ms, items)

    def eligible(self, profile: Mapping[str, Any], now_ms: int) -> list[int]:
        """Offer indexes that survive the rules: not held, not recently dismissed or declined."""
        held = profile.get("held", {})
        offers = profile.get("offers", {})
        crm = profile.get("crm", {})
        out = []
        for j, offer in enumerate(self.offers):
            if offer in held:
                continue
            dismissed = (offers.get(offer) or {}).get("last_dismissed")
            if dismissed and now_ms - dismissed < self.config.dismissed_days * DAY_MS:
                continue
            contact = crm.get(offer)
            if contact:
                since = now_ms - contact.get("time", 0)
                if since < self.config.contacted_days * DAY_MS:
                    continue
                if contact.get("outcome") == "declined" and since < (
                    self.config.declined_days * DAY_MS
                ):
                    continue
            out.append(j)
        return out

    def rank(
        self, profile: Mapping[str, Any], now_ms: int, k: int = 3, exclude: Iterable[str] = ()
    ) -> list[Scored]:
        """The k eligible offers with the highest expected value, with that value as score."""
        banned = set(exclude)
        p = self.propensity(features(profile, self.names, now_ms))[0]
        scored = [
            Scored(self.offers[j], float(p[j] * self.values[self.offers[j]]))
            for j in self.eligible(profile, now_ms)
            if self.offers[j] not in banned
        ]
        return sorted(scored, key=lambda s: (-s.score, s.item))[:k]

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "config": self.config.model_dump(mode="json"),
            "offers": self.offers,
            "values": self.values,
            "features": self.names,
        }
        (path / "model.json").write_text(json.dumps(meta))
        np.savez(
            path / "arrays.npz",
            coef=self.coef,
            intercept=self.intercept,
            mean=self.mean,
            scale=self.scale,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> NextBestOffer:
        meta = json.loads((path / "model.json").read_text())
        if meta.get("name") != cls.name or meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a next-best-offer model of format {FORMAT_VERSION}")
        model = cls(NBOConfig(**meta["config"]))
        model.offers, model.values, model.names = meta["offers"], meta["values"], meta["features"]
        with np.load(path / "arrays.npz", allow_pickle=False) as a:
            model.coef, model.intercept = a["coef"], a["intercept"]
            model.mean, model.scale = a["mean"], a["scale"]
        return model


register(NextBestOffer.name, NextBestOffer.load)
