"""Rebuilding profiles from the log, and checking the live ones against the rebuild.

A full rebuild scans ACTIVITY and CRM once each, in order, through a fast ordered consumer, and
keeps every profile in memory (memory grows with the number of users, not with the log's
length), then writes them to a bucket. A single user's rebuild reads only that user's subjects
through a filtered consumer; the server still scans every block that may hold them, so its time
grows with the log (see bench/replay.py and the README).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.bus import Bus, Refusal, decode
from engine.bus.consumer import Batch
from engine.profiles.profile import CannotApply, apply, content, settle_floor
from engine.profiles.store import ProfileStore, blank
from engine.subjects import SHORT, user_filters


@dataclass
class Rebuild:
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    refused: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def rebuild(
    bus: Bus,
    *,
    token: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Rebuild:
    """Fold the whole log (or one user's part of it) into fresh profiles, in memory."""
    out = Rebuild()
    started = time.perf_counter()
    profiles = out.profiles
    for stream, short in SHORT.items():

        def handle(batch: Batch, stream: str = stream, short: str = short) -> None:
            for seq, subject, data in batch:
                record = decode(stream, seq, subject, data)  # what the live service refuses too
                if isinstance(record, Refusal):
                    out.refused += 1
                    continue
                if record.system:
                    continue
                p = profiles.get(record.token)
                if p is None:
                    p = profiles[record.token] = blank(record.token)
                try:
                    if apply(p, record.event, short, seq):
                        settle_floor(p, short, seq)  # in order, once each: keep `applied` empty
                except CannotApply:
                    out.refused += 1
            out.events += len(batch)
            if progress:
                progress(len(batch))

        subject = user_filters(token)[stream] if token else None
        # Profiles are acyclic: reference counting frees them, and the cyclic collector would
        # otherwise walk millions of live dicts again and again as they accumulate.
        gc.disable()
        try:
            await bus.scan(stream, handle, subject=subject)
        finally:
            gc.enable()
    out.seconds = time.perf_counter() - started
    return out


async def store(
    target: ProfileStore, profiles: dict[str, dict[str, Any]], chunk: int = 2000
) -> int:
    """Write rebuilt profiles (unconditionally, keys created where missing), in chunks."""
    if len(profiles) > chunk:
        await target.keyring.preload()
    items = list(profiles.items())
    for i in range(0, len(items), chunk):
        part = dict(items[i : i + chunk])
        slots = await target.slots(part)
        await target.write([(slots[t], p) for t, p in part.items()], compare=False)
    return len(items)


@dataclass
class Difference:
    token: str
    fields: list[str]


async def verify(
    live: ProfileStore, rebuilt: dict[str, dict[str, Any]], *, every_key: bool
) -> list[Difference]:
    """Compare rebuilt profiles with the stored ones, field by field (delivery bookkeeping
    aside). With `every_key`, stored profiles that the rebuild did not produce count too."""
    tokens = set(rebuilt)
    if every_key:
        tokens |= set(await live.keyring.preload())
    slots = await live.load(sorted(tokens), create_keys=False)
    diffs = []
    for t in sorted(tokens):
        slot = slots.get(t)
        stored = slot.profile if slot else None
        mine = rebuilt.get(t)
        if stored is None or mine is None:
            diffs.append(
                Difference(t, ["<no live profile>" if stored is None else "<not rebuilt>"])
            )
            continue
        a, b = content(stored), content(mine)
        fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if fields:
            diffs.append(Difference(t, fields))
    return diffs
