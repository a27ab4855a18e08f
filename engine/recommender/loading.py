"""Loading the active model of a registry slot, off the event loop (recommender, signals).

A plugin's artifact names its class (`models.plugins`): loading imports it, so the recommender
serves a plugin that is installed where it runs, without being told about it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import models.plugins  # noqa: F401  (registers the finder that imports a plugin's class)
from engine.bus.registry import Registry
from engine.recommender.core import Loaded
from models.base import load_packed


async def load_active(
    registry: Registry, slot: str, current: str | None, work_dir: Path | None = None
) -> Loaded | None:
    """The active model of `slot`, fetched and unpacked in a thread; None when the slot has no
    active model or it is still `current` (a version)."""
    raw = await registry.kv.get(f"active.{slot}")
    if raw is None:
        return None
    version = raw.decode()
    if version == current:
        return None
    artifact = await registry.artifact(version)

    def load() -> Loaded:
        model = load_packed(artifact, work_dir)
        return Loaded(slot, version, model.name, model)

    return await asyncio.to_thread(load)
