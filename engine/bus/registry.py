"""The model registry: artifacts in the `models` object store, model cards and the active model
per slot in the `registry` bucket, and a `model_published` event on every change.

A model becomes active only after it has been loaded as the recommender loads it and asked to
score an empty history (`models.artifact.servable`): one that cannot be (a plugin whose module
is not installed here, a damaged archive) is refused with `Unservable`, naming why, and the slot
keeps its model. The check runs where the activation does; a recommender on another machine
needs the same plugins installed.
"""

from __future__ import annotations

import asyncio
import math
import re
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


VERSION = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""What a version may be: a registry key part and `model_published`'s `model_version`."""


class BadVersion(NerveError):
    def __init__(self, version: str) -> None:
        super().__init__(
            f"model version {version!r} cannot be stored: it may hold only letters, digits, "
            "'_', '.' and '-' (at most 128)"
        )
        self.version = version


class Unservable(NerveError):
    """Model `version` cannot be served: loading it or scoring with it failed with `reason`."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"model {version} cannot be served, so it was not activated: {reason}")
        self.version = version
        self.reason = reason


async def check_servable(version: str, artifact: bytes) -> None:
    """`Unservable` unless the archive loads and scores as serving needs (in a thread)."""
    # Imported here: `models` costs most of a second, which every user of the bus would pay.
    import models.plugins  # noqa: F401  (a plugin's artifact names its class: its finder)
    from models.artifact import servable

    try:
        await asyncio.to_thread(servable, artifact)
    except Exception as exc:  # whatever stops it loading is the reason, shown to the caller
        raise Unservable(version, f"{type(exc).__name__}: {exc}") from exc


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
        """Store the artifact and the card; with `slot`, make it the active model there.
        With a slot, `Unservable` before anything is stored if serving could not load it."""
        if not VERSION.fullmatch(version):
            raise BadVersion(version)
        if slot:
            await check_servable(version, artifact)
        store = await self.nc.jetstream().object_store("models")
        await store.put(version, artifact)
        await self.kv.put(f"model.{version}", orjson.dumps(card))
        if slot:
            await self._switch(version, slot, card)

    async def card(self, version: str) -> dict[str, Any]:
        raw = await self.kv.get(f"model.{version}")
        if raw is None:
            raise UnknownModel(version)
        return dict(orjson.loads(raw))

    async def activate(self, version: str, slot: str) -> dict[str, Any]:
        """Make `version` the active model of `slot` and announce it (also how to roll back);
        `Unservable`, and the slot unchanged, if serving could not load it."""
        card = await self.card(version)
        await check_servable(version, await self.artifact(version))
        return await self._switch(version, slot, card)

    async def _switch(self, version: str, slot: str, card: dict[str, Any]) -> dict[str, Any]:
        """Point `active.<slot>` at a checked `version` and publish `model_published`."""
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
