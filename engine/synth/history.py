"""`generate`: a synthetic history written as JSON Lines, with its catalogue and planted truth.

Steps 4 to 6 of the generative model in `engine.synth` are simulated here, one user at a
time (`_Site`); step 7, the planted anomalies, in `engine.synth.anomalies`. Every draw comes
from one seed, in a fixed order, so the same arguments always write the same bytes. The
anomalies and the home contexts draw from generators of their own (seeded from the same seed),
so a history with anomalies holds the same clean events, ids included, as the one without.
"""

from __future__ import annotations

import csv
import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.synth.anomalies import Case, Planter, home_contexts, write_truth
from engine.synth.model import (
    BUY_RATE,
    CATALOGUE,
    CATEGORIES,
    CREDIT,
    HOURS,
    SEGMENTS,
    Product,
    Segment,
    item_weights,
    simulation,
)
from engine.synth.model import iso as _iso
from nerve_client.ids import uuid7_from_bits

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass
class GenerateSummary:
    users: int
    events: int
    by_type: dict[str, int]
    path: Path
    catalog_path: Path
    truth_path: Path
    start: datetime
    end: datetime
    anomalies_path: Path | None = None
    planted: dict[str, int] = field(default_factory=dict)
    """Planted cases by kind (`engine.synth.anomalies`)."""


@dataclass
class _Population:
    """Everything drawn for all users at once (numpy), in the order the seed fixes."""

    seg_idx: np.ndarray
    intent: np.ndarray
    weights: np.ndarray
    cum: np.ndarray
    n_sessions: np.ndarray
    hours: list[int]
    views: list[int]
    anons: list[int]

    @classmethod
    def draw(cls, nrng: np.random.Generator, users: int, days: int) -> _Population:
        shares = np.array([s.share for s in SEGMENTS])
        seg_idx = nrng.choice(len(SEGMENTS), size=users, p=shares / shares.sum())
        intent = nrng.random(users) < np.array([s.credit_intent for s in SEGMENTS])[seg_idx]
        weights = item_weights(nrng, seg_idx, intent)
        rates = np.array([s.visits_per_week for s in SEGMENTS])[seg_idx] * days / 7.0
        n_sessions = np.maximum(1, nrng.poisson(rates))
        total = int(n_sessions.sum())
        return cls(
            seg_idx=seg_idx,
            intent=intent,
            weights=weights,
            cum=np.cumsum(weights, axis=1),
            n_sessions=n_sessions,
            hours=nrng.choice(24, size=total, p=HOURS / HOURS.sum()).tolist(),
            views=(1 + nrng.poisson(1.5, size=total)).tolist(),
            anons=nrng.integers(1 << 62, size=users).tolist(),
        )


@dataclass
class _Visitor:
    """One user during the simulation: who they are and what they did so far."""

    index: int
    segment: Segment
    intent: bool
    cum_weights: list[float]
    simulated: set[str] = field(default_factory=set)
    owned: set[str] = field(default_factory=set)

    @property
    def user_id(self) -> str:
        return f"u{self.index:07d}"


class _Site:
    """The simulated website: turns each user's sessions into events (`lines`, by time)."""

    def __init__(self, rnd: random.Random, pop: _Population, start: datetime, days: int) -> None:
        self.rnd = rnd
        self.pop = pop
        self.days = days
        self.start_ms = int(start.timestamp() * 1000)
        self.end_ms = self.start_ms + days * DAY_MS
        self.session = 0  # session counter across users: indexes pop.hours and pop.views
        self.lines: list[tuple[int, bytes]] = []
        self.by_type: dict[str, int] = {}
        self.contexts: list[dict[str, str]] | None = None  # home contexts, with anomalies
        self.context: dict[str, str] | None = None  # the current user's
        self.first_login: list[int] = []  # per user, when the first session logged in
        self.amounts: dict[str, list[float]] = {}  # clean amounts by segment (`_note`)

    def emit(
        self,
        ms: int,
        etype: str,
        who: dict[str, str],
        item: str | None,
        props: dict[str, Any],
        sid: str,
        *,
        rnd: random.Random | None = None,
        context: dict[str, str] | None = None,
    ) -> str:
        """Add one event; `rnd` draws its id (default the site's), `context` overrides the
        user's home context. Returns the event's id."""
        event: dict[str, Any] = {
            "id": uuid7_from_bits(ms, (rnd or self.rnd).getrandbits(80)),
            "type": etype,
            "time": _iso(ms),
            **who,
            "session_id": sid,
            "source": "web",
        }
        if item is not None:
            event["item_id"] = item
        event["properties"] = props
        if context or self.context:
            event["context"] = context or self.context
        if ms >= self.end_ms:  # the log is a snapshot at `end`: a session still under way
            return str(event["id"])  # then is cut there (no session is moved or clamped)
        # `+ b"\n"` also copies: orjson hands back a 4 KiB buffer per call, which a list of
        # two million of them would keep (8 GB instead of 0.5).
        self.lines.append((ms, orjson.dumps(event) + b"\n"))
        self.by_type[etype] = self.by_type.get(etype, 0) + 1
        return str(event["id"])

    def user(self, u: int) -> None:
        """Every session of user `u`."""
        pop, rnd = self.pop, self.rnd
        v = _Visitor(u, SEGMENTS[pop.seg_idx[u]], bool(pop.intent[u]), pop.cum[u].tolist())
        self.context = self.contexts[u] if self.contexts else None
        day_offsets = sorted(rnd.random() for _ in range(int(pop.n_sessions[u])))
        for s_i, frac in enumerate(day_offsets):
            day_ms = int(frac * self.days) * DAY_MS
            t = self.start_ms + day_ms + pop.hours[self.session] * HOUR_MS + rnd.randrange(HOUR_MS)
            sid = f"s{u:07d}-{s_i}"
            who = {"user_id": v.user_id}
            t = self._arrive(t, v, s_i, sid)
            if rnd.random() < 0.15:
                t += rnd.randrange(5_000, 40_000)
                cat = CATALOGUE[_pick(v.cum_weights, rnd)].category
                self.emit(t, "search_performed", who, None, {"query": cat, "results_count": 8}, sid)
            n_views = pop.views[self.session]
            self.session += 1
            for _ in range(n_views):
                t = self._view(t, v, who, sid)
            t = self._apply(t, v, who, sid)

    def _arrive(self, t: int, v: _Visitor, s_i: int, sid: str) -> int:
        """The home page; in the first session anonymous, then a login and the consent."""
        who = {"user_id": v.user_id}
        if s_i:
            self.emit(t, "page_viewed", who, None, {"page_type": "home"}, sid)
            return t
        anon = f"a{self.pop.anons[v.index]:016x}"
        self.emit(t, "page_viewed", {"anonymous_id": anon}, None, {"page_type": "home"}, sid)
        t += self.rnd.randrange(5_000, 60_000)
        both = {"user_id": v.user_id, "anonymous_id": anon}
        self.emit(t, "user_identified", both, None, {"method": "login"}, sid)
        self.first_login.append(t)
        consent = {
            "analytics": True,
            "personalization": self.rnd.random() < 0.9,
            "marketing": self.rnd.random() < 0.55,
        }
        self.emit(t + 1, "consent_updated", who, None, consent, sid)
        return t

    def _view(self, t: int, v: _Visitor, who: dict[str, str], sid: str) -> int:
        """One product view, with its category page, simulator run or purchase."""
        rnd = self.rnd
        prod = CATALOGUE[_pick(v.cum_weights, rnd)]
        t += rnd.randrange(8_000, 120_000)
        if rnd.random() < 0.5:
            page = {"page_type": "category", "path": f"/{prod.category}"}
            self.emit(t, "page_viewed", who, None, page, sid)
            t += rnd.randrange(3_000, 20_000)
        self.emit(t, "item_viewed", who, prod.item_id, {"category": prod.category}, sid)
        if prod.category in CREDIT:
            p_sim = 0.8 if v.intent and prod.category == v.segment.credit_kind else 0.5
            if rnd.random() < p_sim:
                t += rnd.randrange(20_000, 180_000)
                props = simulation(prod, v.segment, rnd)
                self._note(f"simulator:{props['simulator']}", props["amount"])
                self.emit(t, "simulator_used", who, prod.item_id, props, sid)
                v.simulated.add(prod.item_id)
        elif prod.item_id not in v.owned and rnd.random() < BUY_RATE[prod.category]:
            t += rnd.randrange(30_000, 300_000)
            self.emit(t, "item_purchased", who, prod.item_id, self._purchase(prod), sid)
            v.owned.add(prod.item_id)
        return t

    def _apply(self, t: int, v: _Visitor, who: dict[str, str], sid: str) -> int:
        """Applications for the credit products simulated so far and not yet taken."""
        rnd = self.rnd
        p_apply = 0.35 if v.intent else 0.02
        for item in sorted(v.simulated - v.owned):
            if rnd.random() < p_apply:
                prod = next(p for p in CATALOGUE if p.item_id == item)
                t += rnd.randrange(60_000, 600_000)
                self.emit(t, "item_added_to_cart", who, item, {"price": prod.value}, sid)
                t += rnd.randrange(60_000, 900_000)
                self.emit(t, "item_purchased", who, item, self._purchase(prod), sid)
                v.owned.add(item)
        return t

    def _purchase(self, prod: Product) -> dict[str, Any]:
        value = round(prod.value * self.rnd.lognormvariate(0, 0.3), 2)
        self._note(f"category:{prod.category}", value)
        return {"value": value}

    def _note(self, segment: str, amount: float) -> None:
        """Keep a clean amount: the distribution an unusual value is planted against."""
        self.amounts.setdefault(segment, []).append(amount)


def generate(
    path: Path,
    *,
    users: int,
    days: int,
    seed: int,
    end: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    anomalies: float = 0.0,
    site_shifts: int | None = None,
) -> GenerateSummary:
    """Write the history (see `engine.synth`); `progress` gets users done per call.

    `anomalies` > 0 plants that fraction of users with each per-user kind and `site_shifts`
    site-wide shifts (default one per week) and writes `<stem>.anomalies.jsonl` beside the
    history (`engine.synth.anomalies`); at 0 the history is the clean one, byte for byte."""
    if users < 1 or days < 1:
        raise ValueError("users and days must be at least 1")
    if site_shifts is not None and site_shifts < 0:
        raise ValueError("site_shifts must be at least 0")
    end = end or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    pop = _Population.draw(np.random.default_rng(seed), users, days)
    site = _Site(random.Random(seed), pop, start, days)
    if anomalies:
        site.contexts = home_contexts(seed, users)
    step = max(1, users // 100)
    for u in range(users):
        site.user(u)
        if progress and (u + 1) % step == 0:
            progress(step)
    if progress and users % step:
        progress(users % step)
    cases = _plant(site, seed, anomalies, site_shifts) if anomalies else []
    site.lines.sort(key=lambda x: x[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.writelines(line for _, line in site.lines)
    catalog_path = _write_catalog(path.with_name(path.stem + ".catalog.jsonl"))
    truth_path = _write_truth(path.with_name(path.stem + ".truth.csv"), pop)
    anomalies_path = path.with_name(path.stem + ".anomalies.jsonl")
    if cases:
        write_truth(anomalies_path, cases)
    else:  # a truth file left by an earlier run would describe another history
        anomalies_path.unlink(missing_ok=True)
    planted: dict[str, int] = {}
    for c in cases:
        planted[c.kind] = planted.get(c.kind, 0) + 1
    by_type = dict(sorted(site.by_type.items()))
    return GenerateSummary(
        users,
        len(site.lines),
        by_type,
        path,
        catalog_path,
        truth_path,
        start,
        end,
        anomalies_path if cases else None,
        planted,
    )


def _plant(site: _Site, seed: int, rate: float, site_shifts: int | None) -> list[Case]:
    """Step 7: the planted anomalies, after the clean simulation (its draws are untouched)."""
    assert site.contexts is not None
    minutes = site.days * 1440
    rates = {t: n / minutes for t, n in site.by_type.items()}
    segments = [SEGMENTS[i] for i in site.pop.seg_idx]
    shifts = max(1, site.days // 7) if site_shifts is None else site_shifts
    planter = Planter(site.emit, seed, site.start_ms, site.end_ms, site.amounts)
    return planter.plant(rate, segments, site.first_login, site.contexts, rates, shifts)


def _write_catalog(path: Path) -> Path:
    with path.open("wb") as f:
        for p in CATALOGUE:
            item = {
                "item_id": p.item_id,
                "name": p.name,
                "category": p.category,
                "value": p.value,
                "url": f"/demo/{p.category}/{p.item_id}",
            }
            f.write(orjson.dumps(item) + b"\n")
    return path


def _write_truth(path: Path, pop: _Population) -> Path:
    """Per user: segment, credit intent and the top three categories by planted weight."""
    users = len(pop.seg_idx)
    cat_of = np.array([CATEGORIES.index(p.category) for p in CATALOGUE])
    cat_weight = np.zeros((users, len(CATEGORIES)))
    np.add.at(cat_weight.T, cat_of, pop.weights.T)
    top3 = np.argsort(-cat_weight, axis=1)[:, :3]
    with path.open("w", newline="") as tf:
        w = csv.writer(tf)
        w.writerow(["user_id", "segment", "credit_intent", "top_categories"])
        for u in range(users):
            w.writerow(
                [
                    f"u{u:07d}",
                    SEGMENTS[pop.seg_idx[u]].name,
                    int(pop.intent[u]),
                    "|".join(CATEGORIES[c] for c in top3[u]),
                ]
            )
    return path


def _pick(cum_weights: list[float], rnd: random.Random) -> int:
    return min(bisect_right(cum_weights, rnd.random()), len(cum_weights) - 1)
