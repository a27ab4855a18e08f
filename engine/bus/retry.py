"""Retrying a batch of deliveries without letting one message stall the stream.

`settle_batch` runs a service's `process(deliveries)` until it succeeds. A failure is retried
with backoff; when the same batch failed `attempts` times it is split, and each delivery is
retried alone, so the good messages of the batch are stored. A delivery that fails `attempts`
times on its own is given up on through `give_up` (the service dead-letters it with the
error), but only when `probe` shows the broker answering: while the broker is away every
message fails, and none of them is at fault, so they are retried until it returns (or `stop`).

The decoder (`engine.bus.decode`) already refuses what cannot be read; this is the net under
what can be read but still cannot be processed (a bug, a value a model chokes on). A delivery
is given up on only after it failed alone `attempts` times and once more after `probe`
answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

log = logging.getLogger("nerve.retry")

T = TypeVar("T")
ATTEMPTS = 3
"""Failures of a batch before it is split, and of a single delivery before it is given up."""


async def settle_batch(
    items: Sequence[T],
    process: Callable[[Sequence[T]], Awaitable[None]],
    give_up: Callable[[T, str], Awaitable[None]],
    probe: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    attempts: int = ATTEMPTS,
    delay: float = 0.2,
    max_delay: float = 10.0,
) -> bool:
    """Process `items` (splitting and giving up as the module says); False if `stop` came
    first, in which case nothing after the last success may be acknowledged."""
    wait = delay
    while True:
        error = await _tries(items, process, stop, attempts, wait, max_delay)
        if error is None:
            return True
        if stop.is_set():
            return False
        if len(items) > 1:
            log.warning("a batch of %d failed %d times; retrying one by one", len(items), attempts)
            for item in items:
                if not await settle_batch([item], process, give_up, probe, stop, delay=delay):
                    return False
            return True
        try:
            await probe()
        except Exception as exc:  # the broker is away: not this message's fault
            log.warning("the broker does not answer (%s); retrying", exc)
            wait = min(wait * 2, max_delay)
            continue
        error = await _tries(items, process, stop, 1, 0.0, max_delay)  # once more, broker up
        if error is None:
            return True
        try:
            await give_up(items[0], error)
            return True
        except Exception:
            log.exception("could not dead-letter a failing message; retrying")


async def _tries(
    items: Sequence[T],
    process: Callable[[Sequence[T]], Awaitable[None]],
    stop: asyncio.Event,
    attempts: int,
    delay: float,
    max_delay: float,
) -> str | None:
    """None once `process` succeeded, else the last error after `attempts` failures."""
    error = ""
    for attempt in range(attempts):
        try:
            await process(items)
            return None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("processing %d message(s) failed (attempt %d)", len(items), attempt + 1)
            if stop.is_set():
                return error
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    return error
