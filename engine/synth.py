"""A synthetic history of a bank's website, with a documented generative model.

The point is not realism for its own sake but a history whose structure is known, so a trained
model can be checked against what was planted.

The generative model (all randomness from one seed):

1. **Catalogue.** `CATALOGUE` lists the products: accounts, savings, cards, loans, mortgages,
   funds, pensions and insurance, each with a category, a base value (what an acquisition is
   worth to the bank, EUR) and a popularity weight.
2. **Segments.** Each user belongs to one of `SEGMENTS` (drawn by its share). A segment has an
   affinity for each category, a visit rate (sessions per week) and a probability of having a
   *credit intent* (wanting a loan or mortgage during the window).
3. **Personal taste.** A user's weight for item *i* is
   `popularity[i] × affinity[segment, category(i)] × taste[user, category(i)]`, with
   `taste ~ Gamma(2, 1/2)` per category (mean 1): users of a segment agree on the broad shape
   and differ in detail. Credit-intent users multiply their weight for their intended credit
   category (`loans` or `mortgages`) by 6.
4. **Sessions.** The number of sessions is Poisson(visit rate × weeks); each starts at a uniform
   day and an hour drawn from a daytime-heavy profile. The first session starts anonymous and
   becomes identified by a `user_identified` event (login) after its first page view; the
   first session also records consent (90 % personalization, 55 % marketing).
5. **Within a session:** a `page_viewed` of the home page, then 1 + Poisson(1.5) item views drawn
   from the user's weights (each preceded by a category `page_viewed` 30 % of the time), a
   `search_performed` with probability 0.15. Viewing a loan or mortgage product runs its
   simulator with probability 0.5 (0.8 with credit intent); amounts and terms depend on the
   segment.
6. **Acquisitions.** A credit product is applied for (`item_added_to_cart`, then
   `item_purchased`) only after a simulator run for it in this or an earlier session: with
   probability 0.35 per session for intent users, 0.02 otherwise. Other products are bought
   with a per-view probability by category (`BUY_RATE`), once per user. Purchase values are
   the base value × LogNormal(0, 0.3).

`generate` writes the events in time order as JSON Lines, and beside them
`<stem>.catalog.jsonl` (one item per line) and `<stem>.truth.csv` (user, segment, credit
intent, top three categories by planted weight).
"""

from __future__ import annotations

import csv
import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.ids import uuid7_from_bits


@dataclass(frozen=True)
class Product:
    item_id: str
    name: str
    category: str
    value: float
    popularity: float


def _p(item_id: str, name: str, category: str, value: float, popularity: float) -> Product:
    return Product(item_id, name, category, value, popularity)


CATALOGUE: tuple[Product, ...] = (
    _p("acc-current", "Everyday current account", "accounts", 60, 5.0),
    _p("acc-premium", "Premium current account", "accounts", 180, 1.5),
    _p("acc-student", "Student account", "accounts", 20, 2.0),
    _p("acc-business", "Business account", "accounts", 240, 1.0),
    _p("sav-easy", "Easy-access savings", "savings", 40, 3.0),
    _p("sav-fixed-1y", "1-year fixed saver", "savings", 70, 1.5),
    _p("sav-fixed-3y", "3-year fixed saver", "savings", 90, 1.0),
    _p("sav-kids", "Children's savings", "savings", 30, 1.0),
    _p("card-debit", "Contactless debit card", "cards", 25, 4.0),
    _p("card-classic", "Classic credit card", "cards", 120, 3.0),
    _p("card-gold", "Gold credit card", "cards", 220, 1.5),
    _p("card-platinum", "Platinum card", "cards", 400, 0.6),
    _p("card-travel", "Travel card, no FX fees", "cards", 140, 1.2),
    _p("card-student", "Student credit card", "cards", 50, 1.0),
    _p("loan-personal", "Personal loan", "loans", 900, 2.5),
    _p("loan-car", "Car loan", "loans", 1100, 1.8),
    _p("loan-home-improve", "Home improvement loan", "loans", 1000, 1.2),
    _p("loan-student", "Student loan", "loans", 500, 0.8),
    _p("mort-fixed", "Fixed-rate mortgage", "mortgages", 6000, 1.5),
    _p("mort-variable", "Variable-rate mortgage", "mortgages", 5500, 1.0),
    _p("mort-first-home", "First-home mortgage", "mortgages", 5000, 1.2),
    _p("fund-world-equity", "World equity index fund", "funds", 300, 2.5),
    _p("fund-sp500", "S&P 500 index fund", "funds", 280, 2.0),
    _p("fund-bonds", "Euro government bond fund", "funds", 200, 1.2),
    _p("fund-esg", "Sustainable leaders fund", "funds", 320, 1.5),
    _p("fund-tech", "Global technology fund", "funds", 350, 1.3),
    _p("fund-emerging", "Emerging markets fund", "funds", 330, 0.8),
    _p("fund-balanced", "Balanced portfolio fund", "funds", 260, 1.6),
    _p("fund-money-market", "Money market fund", "funds", 120, 1.0),
    _p("fund-dividend", "Dividend income fund", "funds", 290, 0.9),
    _p("fund-real-estate", "Real estate fund", "funds", 310, 0.7),
    _p("fund-gold", "Gold ETF", "funds", 180, 0.6),
    _p("pen-standard", "Personal pension plan", "pensions", 700, 1.2),
    _p("pen-growth", "Growth pension plan", "pensions", 800, 0.8),
    _p("pen-secure", "Guaranteed pension plan", "pensions", 600, 0.7),
    _p("ins-home", "Home insurance", "insurance", 200, 2.0),
    _p("ins-car", "Car insurance", "insurance", 250, 2.0),
    _p("ins-life", "Life insurance", "insurance", 350, 1.2),
    _p("ins-travel", "Travel insurance", "insurance", 60, 1.5),
    _p("ins-health", "Health insurance", "insurance", 400, 1.0),
    _p("ins-pet", "Pet insurance", "insurance", 90, 0.6),
)
CATEGORIES = (
    "accounts",
    "savings",
    "cards",
    "loans",
    "mortgages",
    "funds",
    "pensions",
    "insurance",
)
CREDIT = {"loans": "loan", "mortgages": "mortgage"}
SIMULATOR_OF = {"loan-car": "car_loan"}
BUY_RATE = {
    "accounts": 0.04,
    "savings": 0.05,
    "cards": 0.05,
    "funds": 0.04,
    "pensions": 0.03,
    "insurance": 0.05,
}


@dataclass(frozen=True)
class Segment:
    name: str
    share: float
    visits_per_week: float
    credit_intent: float
    credit_kind: str
    loan_amount: tuple[float, float]
    affinity: tuple[float, ...]  # per CATEGORIES


# Affinity per category, in the order of CATEGORIES:
#   accounts savings cards loans mortgages funds pensions insurance
_SEG = [
    ("student", 0.15, 0.20, 0.10, "loans", 6_000, 0.5, (3, 1, 2.5, 1.2, 0.1, 0.4, 0.1, 0.6)),
    ("young_pro", 0.25, 0.25, 0.25, "loans", 15_000, 0.5, (1.5, 1.2, 2, 2, 0.8, 1.5, 0.5, 1)),
    ("family", 0.25, 0.20, 0.30, "mortgages", 220_000, 0.4, (1, 1.5, 1, 1.5, 2.5, 0.7, 1, 2.5)),
    ("investor", 0.15, 0.30, 0.05, "loans", 30_000, 0.5, (0.6, 1.2, 1.2, 0.3, 0.5, 4, 1.8, 0.6)),
    ("retiree", 0.12, 0.15, 0.03, "loans", 8_000, 0.5, (0.8, 2.5, 0.6, 0.3, 0.1, 1.5, 2.5, 2)),
    ("business", 0.08, 0.25, 0.20, "loans", 40_000, 0.6, (2.5, 1, 1.8, 2, 0.5, 1, 0.5, 1.2)),
]
SEGMENTS: tuple[Segment, ...] = tuple(
    Segment(name, share, visits, intent, kind, (median, sigma), affinity)
    for name, share, visits, intent, kind, median, sigma, affinity in _SEG
)
_HOURS = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 4, 4, 5, 5, 4, 4, 4, 5, 6, 7, 7, 6, 4, 2], dtype=float
)


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


def _item_weights(rng: np.random.Generator, seg_idx: np.ndarray, intent: np.ndarray) -> np.ndarray:
    cat_of = np.array([CATEGORIES.index(p.category) for p in CATALOGUE])
    pop = np.array([p.popularity for p in CATALOGUE])
    affinity = np.array([s.affinity for s in SEGMENTS])  # segments × categories
    taste = rng.gamma(2.0, 0.5, size=(len(seg_idx), len(CATEGORIES)))
    cat_w = affinity[seg_idx] * taste
    kinds = np.array([CATEGORIES.index(s.credit_kind) for s in SEGMENTS])[seg_idx]
    cat_w[np.arange(len(seg_idx)), kinds] *= np.where(intent, 6.0, 1.0)
    weights = pop[None, :] * cat_w[:, cat_of]
    return weights / weights.sum(axis=1, keepdims=True)


def generate(
    path: Path,
    *,
    users: int,
    days: int,
    seed: int,
    end: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Write the history (see the module docstring); `progress` gets users done per call."""
    if users < 1 or days < 1:
        raise ValueError("users and days must be at least 1")
    end = end or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    nrng = np.random.default_rng(seed)
    rnd = random.Random(seed)
    shares = np.array([s.share for s in SEGMENTS])
    seg_idx = nrng.choice(len(SEGMENTS), size=users, p=shares / shares.sum())
    intent = nrng.random(users) < np.array([s.credit_intent for s in SEGMENTS])[seg_idx]
    weights = _item_weights(nrng, seg_idx, intent)
    cum = np.cumsum(weights, axis=1)
    rates = np.array([s.visits_per_week for s in SEGMENTS])[seg_idx] * days / 7.0
    n_sessions = np.maximum(1, nrng.poisson(rates))
    total = int(n_sessions.sum())
    hours = nrng.choice(24, size=total, p=_HOURS / _HOURS.sum()).tolist()
    views = (1 + nrng.poisson(1.5, size=total)).tolist()
    anons = nrng.integers(1 << 62, size=users).tolist()
    k = 0  # session counter across users
    start_ms = int(start.timestamp() * 1000)
    span_ms = days * 86_400_000
    items = [p.item_id for p in CATALOGUE]
    lines: list[tuple[int, bytes]] = []
    by_type: dict[str, int] = {}
    step = max(1, users // 100)

    def emit(
        ms: int,
        etype: str,
        who: dict[str, str],
        item: str | None,
        props: dict[str, Any],
        sid: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        event: dict[str, Any] = {
            "id": uuid7_from_bits(ms, rnd.getrandbits(80)),
            "type": etype,
            "time": _iso(ms),
            **who,
            "session_id": sid,
            "source": "web",
        }
        if item is not None:
            event["item_id"] = item
        event["properties"] = props
        if extra:
            event.update(extra)
        # `+ b"\n"` also copies: orjson hands back a 4 KiB buffer per call, which a list of
        # two million of them would keep (8 GB instead of 0.5).
        lines.append((ms, orjson.dumps(event) + b"\n"))
        by_type[etype] = by_type.get(etype, 0) + 1

    for u in range(users):
        seg = SEGMENTS[seg_idx[u]]
        uid = f"u{u:07d}"
        anon = f"a{anons[u]:016x}"
        cw = cum[u].tolist()
        day_offsets = sorted(rnd.random() for _ in range(int(n_sessions[u])))
        simulated: set[str] = set()
        owned: set[str] = set()
        for s_i, frac in enumerate(day_offsets):
            day_ms = int(frac * days) * 86_400_000
            t = start_ms + day_ms + hours[k] * 3_600_000 + rnd.randrange(3_600_000)
            t = min(t, start_ms + span_ms - 7_200_000)  # a session ends before `end`
            sid = f"s{u:07d}-{s_i}"
            who = {"user_id": uid}
            if s_i == 0:
                emit(t, "page_viewed", {"anonymous_id": anon}, None, {"page_type": "home"}, sid)
                t += rnd.randrange(5_000, 60_000)
                emit(
                    t,
                    "user_identified",
                    {"user_id": uid, "anonymous_id": anon},
                    None,
                    {"method": "login"},
                    sid,
                )
                consent = {
                    "analytics": True,
                    "personalization": rnd.random() < 0.9,
                    "marketing": rnd.random() < 0.55,
                }
                emit(t + 1, "consent_updated", who, None, consent, sid)
            else:
                emit(t, "page_viewed", who, None, {"page_type": "home"}, sid)
            if rnd.random() < 0.15:
                t += rnd.randrange(5_000, 40_000)
                cat = CATALOGUE[_pick(cw, rnd)].category
                emit(t, "search_performed", who, None, {"query": cat, "results_count": 8}, sid)
            n_views = views[k]
            k += 1
            for _ in range(n_views):
                idx = _pick(cw, rnd)
                prod = CATALOGUE[idx]
                t += rnd.randrange(8_000, 120_000)
                if rnd.random() < 0.5:
                    emit(
                        t,
                        "page_viewed",
                        who,
                        None,
                        {"page_type": "category", "path": f"/{prod.category}"},
                        sid,
                    )
                    t += rnd.randrange(3_000, 20_000)
                emit(t, "item_viewed", who, prod.item_id, {"category": prod.category}, sid)
                if prod.category in CREDIT:
                    p_sim = 0.8 if intent[u] and prod.category == seg.credit_kind else 0.5
                    if rnd.random() < p_sim:
                        t += rnd.randrange(20_000, 180_000)
                        emit(
                            t, "simulator_used", who, prod.item_id, _simulation(prod, seg, rnd), sid
                        )
                        simulated.add(prod.item_id)
                elif prod.item_id not in owned and rnd.random() < BUY_RATE[prod.category]:
                    t += rnd.randrange(30_000, 300_000)
                    emit(
                        t,
                        "item_purchased",
                        who,
                        prod.item_id,
                        {"value": round(prod.value * rnd.lognormvariate(0, 0.3), 2)},
                        sid,
                    )
                    owned.add(prod.item_id)
            p_apply = 0.35 if intent[u] else 0.02
            for item in sorted(simulated - owned):
                if rnd.random() < p_apply:
                    prod = CATALOGUE[items.index(item)]
                    t += rnd.randrange(60_000, 600_000)
                    emit(t, "item_added_to_cart", who, item, {"price": prod.value}, sid)
                    t += rnd.randrange(60_000, 900_000)
                    emit(
                        t,
                        "item_purchased",
                        who,
                        item,
                        {"value": round(prod.value * rnd.lognormvariate(0, 0.3), 2)},
                        sid,
                    )
                    owned.add(item)
        if progress and (u + 1) % step == 0:
            progress(step)
    if progress and users % step:
        progress(users % step)

    lines.sort(key=lambda x: x[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.writelines(line for _, line in lines)
    catalog_path = path.with_name(path.stem + ".catalog.jsonl")
    with catalog_path.open("wb") as f:
        for p in CATALOGUE:
            f.write(
                orjson.dumps(
                    {
                        "item_id": p.item_id,
                        "name": p.name,
                        "category": p.category,
                        "value": p.value,
                        "url": f"/demo/{p.category}/{p.item_id}",
                    }
                )
                + b"\n"
            )
    truth_path = path.with_name(path.stem + ".truth.csv")
    cat_of = np.array([CATEGORIES.index(p.category) for p in CATALOGUE])
    cat_weight = np.zeros((users, len(CATEGORIES)))
    np.add.at(cat_weight.T, cat_of, weights.T)
    top3 = np.argsort(-cat_weight, axis=1)[:, :3]
    with truth_path.open("w", newline="") as tf:
        w = csv.writer(tf)
        w.writerow(["user_id", "segment", "credit_intent", "top_categories"])
        for u in range(users):
            w.writerow(
                [
                    f"u{u:07d}",
                    SEGMENTS[seg_idx[u]].name,
                    int(intent[u]),
                    "|".join(CATEGORIES[c] for c in top3[u]),
                ]
            )
    return GenerateSummary(
        users, len(lines), dict(sorted(by_type.items())), path, catalog_path, truth_path, start, end
    )


def _pick(cum_weights: list[float], rnd: random.Random) -> int:
    return min(bisect_right(cum_weights, rnd.random()), len(cum_weights) - 1)


def _simulation(prod: Product, seg: Segment, rnd: random.Random) -> dict[str, Any]:
    simulator = SIMULATOR_OF.get(prod.item_id, CREDIT[prod.category])
    median, sigma = seg.loan_amount
    amount = round(median * rnd.lognormvariate(0, sigma), -2) or 100.0
    term = (
        rnd.choice([240, 300, 360])
        if prod.category == "mortgages"
        else rnd.choice([12, 24, 36, 48, 60, 84])
    )
    rate = round(rnd.uniform(2.5, 4.5) if prod.category == "mortgages" else rnd.uniform(5, 11), 2)
    monthly = amount * (rate / 1200) / (1 - (1 + rate / 1200) ** -term)
    return {
        "simulator": simulator,
        "amount": amount,
        "term_months": term,
        "annual_rate": rate,
        "monthly_payment": round(monthly, 2),
    }


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


async def visitors(publisher: Any, users: int, stop: Any, rate: float = 4.0, seed: int = 7) -> int:
    """Publish a live trickle of synthetic visitors (page and product views, a few loan
    simulations) at about `rate` events/s until `stop` is set: what `nerve demo` runs so
    that the log and the lists keep moving. Returns how many events it published."""
    import asyncio

    from engine.events import parse_event
    from engine.ids import uuid7

    rnd = random.Random(seed)
    sent = 0
    while not stop.is_set():
        user = f"u{rnd.randrange(users):07d}"
        prod = rnd.choice(CATALOGUE)
        now = datetime.now(UTC).isoformat()
        batch = [
            {
                "id": uuid7(),
                "type": "page_viewed",
                "time": now,
                "user_id": user,
                "source": "demo",
                "properties": {"page_type": "category"},
            },
            {
                "id": uuid7(),
                "type": "item_viewed",
                "time": now,
                "user_id": user,
                "source": "demo",
                "item_id": prod.item_id,
                "properties": {"category": prod.category},
            },
        ]
        if prod.category in CREDIT and rnd.random() < 0.3:
            props = _simulation(prod, SEGMENTS[0], rnd)
            batch.append(
                {
                    "id": uuid7(),
                    "type": "simulator_used",
                    "time": now,
                    "user_id": user,
                    "source": "demo",
                    "item_id": prod.item_id,
                    "properties": props,
                }
            )
        await publisher.publish_events([parse_event(e) for e in batch])
        sent += len(batch)
        await asyncio.sleep(len(batch) / rate)
    return sent
