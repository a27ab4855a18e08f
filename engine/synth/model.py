"""The parameters of the synthetic bank site (see `engine.synth`): its products, its customer
segments, when people visit, and the draws that depend only on them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np


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
HOURS = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 4, 4, 5, 5, 4, 4, 4, 5, 6, 7, 7, 6, 4, 2], dtype=float
)
"""Relative weight of each hour of the day for a session's start."""


def item_weights(rng: np.random.Generator, seg_idx: np.ndarray, intent: np.ndarray) -> np.ndarray:
    """Per user (row) the probability of viewing each product of `CATALOGUE`: popularity ×
    segment affinity × personal taste, credit intent boosting the intended credit category."""
    cat_of = np.array([CATEGORIES.index(p.category) for p in CATALOGUE])
    pop = np.array([p.popularity for p in CATALOGUE])
    affinity = np.array([s.affinity for s in SEGMENTS])  # segments × categories
    taste = rng.gamma(2.0, 0.5, size=(len(seg_idx), len(CATEGORIES)))
    cat_w = affinity[seg_idx] * taste
    kinds = np.array([CATEGORIES.index(s.credit_kind) for s in SEGMENTS])[seg_idx]
    cat_w[np.arange(len(seg_idx)), kinds] *= np.where(intent, 6.0, 1.0)
    weights = pop[None, :] * cat_w[:, cat_of]
    return weights / weights.sum(axis=1, keepdims=True)


def simulation(prod: Product, seg: Segment, rnd: random.Random) -> dict[str, Any]:
    """The properties of a simulator run on `prod` by a user of `seg`."""
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


def iso(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC, to the millisecond (`2026-05-01T09:30:00.000Z`)."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
