"""The model registry: artifacts in the `models` object store, model cards and the active model
per slot in the `registry` bucket, and a `model_published` event on every change."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from engine.bus.kv import JetStreamKV
from engine.bus.publisher import Outgoing, Publisher
from nerve_client.errors import NerveError
from nerve_client.events import parse_event
from nerve_client.ids import uuid7


class UnknownModel(NerveError):
    def __init__(self, version: str) -> None:
        super().__init__(f"no model {version!r} in the registry (see `nerve models`)")
        self.version = version


class Registry:
    def __init__(self, nc: NATS, kv: JetStreamKV) -> None:
        self.nc = nc
        self.kv = kv

    @classmethod
    async def open(cls, nc: NATS) -> Registry:
        return cls(nc, await JetStreamKV.open(nc, "registry"))

    async def publish(
        self, version: str, card: dict[str, Any], artifact: bytes, slot: str | None
    ) -> None:
        """Store the artifact and the card; with `slot`, make it the active model there."""
        store = await self.nc.jetstream().object_store("models")
        await store.put(version, artifact)
        await self.kv.put(f"model.{version}", orjson.dumps(card))
        if slot:
            await self.activate(version, slot)

    async def card(self, version: str) -> dict[str, Any]:
        raw = await self.kv.get(f"model.{version}")
        if raw is None:
            raise UnknownModel(version)
        return dict(orjson.loads(raw))

    async def activate(self, version: str, slot: str) -> dict[str, Any]:
        """Make `version` the active model of `slot` and announce it (also how to roll back)."""
        card = await self.card(version)
        metrics = card.get("metrics", {}).get(card.get("model"), {})
        event = parse_event(
            {
                "id": uuid7(),
                "type": "model_published",
                "time": datetime.now(UTC).isoformat(),
                "source": "training",
                "properties": {
                    "model_version": version,
                    "slot": slot,
                    "model": card.get("model", "?"),
                    "metrics": {
                        k: float(v)
                        for k, v in metrics.items()
                        if isinstance(v, int | float) and math.isfinite(v)
                    },
                },
            }
        )
        await self.kv.put(f"active.{slot}", version.encode())
        await Publisher(self.nc).publish([Outgoing.event(event)])
        return card

    async def artifact(self, version: str) -> bytes:
        store = await self.nc.jetstream().object_store("models")
        try:
            result = await store.get(version)
        except Exception as exc:
            raise UnknownModel(version) from exc
        return bytes(result.data or b"")

    async def listing(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every model card (oldest first) and the active version per slot."""
        cards, active = [], {}
        for key in await self.kv.keys():
            raw = await self.kv.get(key)
            if raw is None:
                continue
            if key.startswith("model."):
                cards.append(orjson.loads(raw))
            elif key.startswith("active."):
                active[key.removeprefix("active.")] = raw.decode()
        cards.sort(key=lambda c: c.get("created_at", ""))
        return cards, active
