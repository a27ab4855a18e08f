"""Rebuilding profiles from the log, and checking the live ones against the rebuild.

A full rebuild scans ACTIVITY and CRM once each, in order, through a fast ordered consumer, and
keeps every profile in memory (memory grows with the number of users, not with the log's
length), then writes them to a bucket. A single user's rebuild reads only that user's subjects,
and those of the anonymous ids its logins stitched in (`stitch`), through filtered consumers; the
server still scans every block that may hold them, so its time grows with the log (see
bench/replay.py and the README).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.bus import Bus, Refusal, decode
from engine.bus.consumer import Batch
from engine.profiles import stitch
from engine.profiles.profile import CannotApply, content, settle_floor
from engine.profiles.store import ProfileStore
from nerve_client.subjects import SHORT, user_filters


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
    if token is not None:
        return await _rebuild_one(bus, token, progress)
    out = Rebuild()
    started = time.perf_counter()
    for stream in SHORT:

        def handle(batch: Batch, stream: str = stream) -> None:
            _fold(out, stream, batch)
            if progress:
                progress(len(batch))

        # Profiles are acyclic: reference counting frees them, and the cyclic collector would
        # otherwise walk millions of live dicts again and again as they accumulate.
        gc.disable()
        try:
            await bus.scan(stream, handle)
        finally:
            gc.enable()
    out.seconds = time.perf_counter() - started
    return out


def _fold(out: Rebuild, stream: str, batch: Batch) -> None:
    """Fold a batch of `stream` read in order, as the live service does (`stitch.fold`)."""
    short = SHORT[stream]
    profiles = out.profiles
    for seq, subject, data in batch:
        record = decode(stream, seq, subject, data)  # what the live service refuses too
        if isinstance(record, Refusal):
            out.refused += 1
            continue
        if record.system:
            continue
        try:
            for t in stitch.fold(profiles, record.token, record.event, short, seq):
                settle_floor(profiles[t], short, seq)  # in order, once each: `applied` empty
        except CannotApply:
            out.refused += 1
    out.events += len(batch)


async def _rebuild_one(bus: Bus, token: str, progress: Callable[[int], None] | None) -> Rebuild:
    """One user's profile and those of the anonymous ids its logins name: their subjects are
    read one filter at a time, then folded together in stream order, as a full rebuild would.
    (Whether another user's login took a visitor's history first is not seen from here.)"""
    out = Rebuild()
    started = time.perf_counter()
    read: dict[str, dict[int, tuple[str, bytes]]] = {stream: {} for stream in SHORT}
    todo, seen = [token], set()
    while todo:
        t = todo.pop()
        seen.add(t)
        for stream in SHORT:
            for seq, subject, data in await bus.read_all(stream, user_filters(t)[stream]):
                read[stream][seq] = (subject, data)
                record = decode(stream, seq, subject, data)
                anon = (
                    None if isinstance(record, Refusal) else stitch.linked_anonymous(record.event)
                )
                if anon is not None and t == token and anon not in seen | set(todo):
                    todo.append(anon)
    for stream, messages in read.items():
        batch = [(seq, *messages[seq]) for seq in sorted(messages)]
        _fold(out, stream, batch)
        if progress:
            progress(len(batch))
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
