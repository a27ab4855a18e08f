"""A small bank for the recommender tests: a catalogue, three trained models, a slots config.

The models are fitted on profiles built with the engine's own projection from scripted events,
so what they learn is known: people who simulate a loan take the personal loan, people who look
at savings open the savings account, the rest take the card.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from nats.aio.client import Client as NATS

from engine.bus import Bus, Outgoing, Publisher
from engine.profiles.profile import apply, new_profile
from engine.recommender.catalog import Item, item_subject
from engine.recommender.slots import SlotsConfig
from models import Interactions, make
from models.base import pack
from models.nbo import NextBestOffer, feature_names, features
from nerve_client.ids import uuid7

ITEMS = [
    Item(
        item_id="loan-personal",
        name="Personal loan",
        category="loans",
        value=900,
        url="/demo/loans/loan-personal",
    ),
    Item(
        item_id="loan-car", name="Car loan", category="loans", value=700, url="/demo/loans/loan-car"
    ),
    Item(
        item_id="savings-plus",
        name="Savings Plus",
        category="savings",
        value=300,
        url="/demo/savings/savings-plus",
    ),
    Item(
        item_id="card-gold",
        name="Gold card",
        category="cards",
        value=200,
        url="/demo/cards/card-gold",
    ),
    Item(
        item_id="card-basic",
        name="Basic card",
        category="cards",
        value=50,
        url="/demo/cards/card-basic",
    ),
    Item(
        item_id="fund-world",
        name="World fund",
        category="funds",
        value=400,
        url="/demo/funds/fund-world",
    ),
    Item(
        item_id="fund-bonds",
        name="Bond fund",
        category="funds",
        value=250,
        url="/demo/funds/fund-bonds",
    ),
]
OFFERS = [i.item_id for i in ITEMS]
VALUES = {i.item_id: float(i.value or 0) for i in ITEMS}
NOW = datetime(2026, 11, 1, tzinfo=UTC)

SLOTS = {
    "slots": {
        "home": {
            "k": 3,
            "fallback": "trending",
            "rules": {"cap": {"impressions": 2, "days": 7}, "max_per_category": 1},
        },
        "similar": {"kind": "similar", "k": 3, "fallback": "trending"},
        "trending": {"k": 4, "min_history": 0},
    }
}


def slots_config(**changes: Any) -> SlotsConfig:
    raw = {"slots": {k: dict(v) for k, v in SLOTS["slots"].items()}}
    for slot, fields in changes.items():
        raw["slots"][slot].update(fields)
    return SlotsConfig.model_validate(raw)


def _event(
    etype: str, user: str, seq: int, item: str | None = None, **props: Any
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "id": uuid7(),
        "type": etype,
        "time": NOW.isoformat(),
        "user_id": user,
        "properties": props,
    }
    if item:
        e["item_id"] = item
    return e


def training_profiles(users: int = 300, seed: int = 3) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Profiles (built by the projection) and what each user acquired (users x offers)."""
    rng = np.random.default_rng(seed)
    profiles, y = [], np.zeros((users, len(OFFERS)))
    for u in range(users):
        name = f"train-{u}"
        p = new_profile(name, name, None)
        seq = 0

        def add(
            etype: str, item: str | None = None, p: Any = p, name: str = name, **props: Any
        ) -> None:
            nonlocal seq
            seq += 1
            apply(p, _event(etype, name, seq, item, **props), "activity", seq)

        kind = u % 3
        for _ in range(int(rng.integers(1, 4))):
            add("page_viewed")
        if kind == 0:
            if rng.random() < 0.5:
                add("item_viewed", "card-gold", category="cards")
            add("item_viewed", "loan-personal", category="loans")
            add("simulator_used", "loan-personal", simulator="loan", amount=9000, term_months=36)
            if rng.random() < 0.8:
                y[u, OFFERS.index("loan-personal")] = 1
        elif kind == 1:
            add("item_viewed", "savings-plus", category="savings")
            add("item_viewed", "fund-world", category="funds")
            if rng.random() < 0.8:
                y[u, OFFERS.index("savings-plus")] = 1
        else:
            add("item_viewed", "card-gold", category="cards")
            if rng.random() < 0.6:
                y[u, OFFERS.index("card-gold")] = 1
        if rng.random() < 0.1:
            y[u, OFFERS.index("fund-bonds")] = 1
        profiles.append(p)
    return profiles, y


def fit_nbo() -> NextBestOffer:
    profiles, y = training_profiles()
    names = feature_names(profiles, OFFERS)
    now_ms = int(NOW.timestamp() * 1000)
    x = np.vstack([features(p, names, now_ms) for p in profiles])
    return NextBestOffer(min_positives=3, c=1.0).fit(x, y, names, OFFERS, VALUES)


def interactions() -> Interactions:
    """Co-views: loans with loans, savings with funds, cards with cards; the card most popular."""
    rows = []
    for u in range(200):
        group = [
            ["loan-personal", "loan-car"],
            ["savings-plus", "fund-world", "fund-bonds"],
            ["card-gold", "card-basic"],
        ][u % 3]
        for item in group:
            rows.append((f"u{u}", item, "item_viewed"))
    for u in range(60):
        rows.append((f"p{u}", "card-gold", "item_viewed"))
    frame = pd.DataFrame(rows, columns=["user", "item_id", "type"])
    frame["time"] = pd.Timestamp(NOW)
    return Interactions.from_frame(frame)


async def publish_model(nc: NATS, model: Any, slot: str, version: str | None = None) -> str:
    """Save, pack and publish `model` as the active model of `slot`; returns its version."""
    version = version or f"{model.name}-{uuid7()[-12:]}"
    with tempfile.TemporaryDirectory() as tmp:
        artifact = pack(model.save(Path(tmp) / "m"))
    card = {"version": version, "model": model.name, "created_at": datetime.now(UTC).isoformat()}
    await (await Bus(nc).registry()).publish(version, card, artifact, slot)
    return version


async def publish_catalog(nc: NATS, items: list[Item] = ITEMS) -> None:
    await Publisher(nc).publish(
        [Outgoing(item_subject(i.item_id), i.model_dump_json().encode(), uuid7()) for i in items]
    )


async def publish_world(nc: NATS) -> dict[str, str]:
    """Catalogue and the three models; returns the version active per slot."""
    await publish_catalog(nc)
    data = interactions()
    return {
        "home": await publish_model(nc, fit_nbo(), "home"),
        "similar": await publish_model(nc, make("itemknn").fit(data), "similar"),
        "trending": await publish_model(nc, make("popular").fit(data), "trending"),
    }
