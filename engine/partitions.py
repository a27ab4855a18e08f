"""Which partition a user is in, and which partitions this replica serves (leases).

ACTIVITY and CRM are split by the broker (`nerve init --partitions P`): the server stores a
user's events under `<prefix>.<user>.<type>.<p>` with `p = fnv1a32(user token) % P`
(`{{partition(P,1)}}`, nats-server `server/subject_transform.go`, `getHashPartition`).
`partition_of` computes the same number, so the engine knows a user's partition without asking.

`PartitionOwner` keeps this replica's share of the partitions through leases in the KV bucket
`partitions` (`engine.bus.leases.LeaseTable`). Why a KV bucket with a server-side max age and
per-key compare-and-set, rather than a consumer group or a queue subscription: the server
alone decides when a lease is gone (its expiry timer, not the clocks of the replicas), a claim
is one `create` that exactly one replica wins, and a renewal is an `update` on the revision
the holder last wrote, so a holder that lost its lease learns it at its next renewal.

* Every round (a third of the lease time) a replica renews its member key and its leases,
  counts the live members and aims at its fair share, `ceil(P / members)`: it releases what
  it holds beyond that (gracefully: stop consuming, then delete the lease) and claims free
  partitions up to it. A replica that joins therefore takes partitions within a round or
  two, and a dead one's partitions are claimed once its lease keys expire.
* A holder fences itself: a lease counts as held only until `0.75 * ttl` after the renewal
  that was sent last succeeded, i.e. before the server can let anyone else claim it (its
  expiry counts from when it stored the renewal, later than when it was sent). So a partition
  moves only once its previous owner has stopped serving it. The per-subject compare-and-set
  of `reco.<user>.<slot>` stays the last line: a paused owner's stale list is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from engine.bus import Bus
from engine.bus.consumer import Delivery
from engine.bus.gaveup import GiveUp
from engine.bus.leases import LeaseTable, partitioned_push, user_partitions
from engine.bus.partitioned import PartitionedPush
from nerve_client.subjects import SHORT

log = logging.getLogger("nerve.partitions")

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
FENCE = 0.75
"""Fraction of the lease time after a successful renewal during which a lease counts as held."""


def partition_of(token: str, partitions: int) -> int:
    """The partition of a user token: FNV-1a (32 bits) of its bytes modulo `partitions`,
    exactly as the server's `{{partition(n,1)}}` computes it (0 when unpartitioned)."""
    if partitions <= 1:
        return 0
    h = _FNV_OFFSET
    for b in token.encode():
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h % partitions


def fair_share(partitions: int, members: int) -> int:
    """How many partitions each of `members` live replicas aims to hold."""
    return math.ceil(partitions / max(1, members))


class Leases(Protocol):
    """The lease operations `PartitionOwner` needs (`engine.bus.leases.LeaseTable`)."""

    holder: str

    async def heartbeat(self) -> int:
        """Renew this holder's member key; return how many members are alive."""
        ...

    async def claim(self, partition: int) -> bool: ...

    async def renew(self, partition: int) -> bool: ...

    async def release(self, partition: int) -> None: ...

    async def leave(self) -> None:
        """Remove this holder's member key."""
        ...

    async def free(self, partitions: int) -> list[int]:
        """Partitions nobody holds a lease on now."""
        ...


Change = Callable[[int], Awaitable[None]]


class PartitionOwner:
    """This replica's share of the partitions, kept through `leases`.

    `on_gain(p)` runs once a lease is won (`p` counts as held from then on); `on_lose(p)`
    runs when it is released, lost or fenced (stop consuming `p` there)."""

    def __init__(
        self,
        leases: Leases,
        partitions: int,
        ttl: float,
        on_gain: Change,
        on_lose: Change,
        *,
        expect: int = 1,
    ) -> None:
        self.leases = leases
        self.partitions = max(1, partitions)
        self.ttl = ttl
        self.on_gain, self.on_lose = on_gain, on_lose
        self.expect = max(1, expect)
        """Replicas expected (`--replicas`): for its first lease time a replica claims only
        `ceil(P / expect)`, so a fleet started together splits at once instead of one replica
        taking everything and handing half of it over a round later."""
        self._started = time.monotonic()
        self._valid_until: dict[int, float] = {}
        self.rounds = 0
        self.first_round = asyncio.Event()

    @property
    def held(self) -> set[int]:
        """The partitions this replica holds a valid lease on now."""
        now = time.monotonic()
        return {p for p, until in self._valid_until.items() if until > now}

    def owns_partition(self, partition: int) -> bool:
        return self._valid_until.get(partition, 0.0) > time.monotonic()

    def owns_token(self, token: str) -> bool:
        return self.owns_partition(partition_of(token, self.partitions))

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every `ttl / 3` until `stop`; then release every lease (a clean stop hands
        its partitions over at once instead of after the lease time). A cancelled task (a
        crash) releases nothing: its leases expire on the server."""
        while not stop.is_set():
            try:
                await self.round()
            except Exception as exc:  # the broker is away: fence, try again next round
                log.warning("partition round failed: %s", exc)
                await self._fence()
            self.first_round.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl / 3)
        await self.release_all()

    async def round(self) -> None:
        """Renew, fence what could not be renewed, release extras, claim up to the share."""
        self.rounds += 1
        members = await self.leases.heartbeat()
        for p in sorted(self._valid_until):
            sent = time.monotonic()
            if await self.leases.renew(p):
                self._valid_until[p] = sent + FENCE * self.ttl
            else:
                await self._drop(p)
        await self._fence()
        if time.monotonic() - self._started < self.ttl:
            members = max(members, self.expect)
        share = fair_share(self.partitions, members)
        for p in sorted(self._valid_until, reverse=True)[: max(0, len(self._valid_until) - share)]:
            await self._drop(p)
            await self.leases.release(p)
        if len(self._valid_until) >= share:
            return
        for p in await self.leases.free(self.partitions):
            if len(self._valid_until) >= share:
                break
            sent = time.monotonic()
            if await self.leases.claim(p):
                # held before its consumer starts: its first deliveries are this replica's
                self._valid_until[p] = sent + FENCE * self.ttl
                try:
                    await self.on_gain(p)
                except Exception:
                    self._valid_until.pop(p, None)
                    await self.on_lose(p)
                    await self.leases.release(p)
                    raise

    async def _fence(self) -> None:
        now = time.monotonic()
        for p in [p for p, until in self._valid_until.items() if until <= now]:
            log.warning("partition %d: lease not renewed in time; stopped serving it", p)
            await self._drop(p)
            with contextlib.suppress(Exception):  # claimable again at once, by anyone
                await self.leases.release(p)

    async def _drop(self, partition: int) -> None:
        if self._valid_until.pop(partition, None) is not None:
            await self.on_lose(partition)

    async def release_all(self) -> None:
        for p in sorted(self._valid_until):
            await self._drop(p)
            with contextlib.suppress(Exception):
                await self.leases.release(p)
        with contextlib.suppress(Exception):
            await self.leases.leave()


@dataclass
class Share:
    """What a partitioned service consumes: its leases and, per user stream, the consumers of
    the partitions it holds (`engine.bus.partitioned`)."""

    owner: PartitionOwner
    consumers: list[PartitionedPush]

    async def start(self) -> None:
        for c in self.consumers:
            await c.start()

    async def stop(self) -> None:
        for c in self.consumers:
            await c.stop()


async def open_share(
    bus: Bus,
    group: str,
    on_message: Callable[[Delivery], None],
    *,
    give_up: GiveUp | None,
    ack_wait: float,
    expect: int = 1,
    holder: str | None = None,
) -> Share:
    """The leases of `group` (the consumers' name prefix too) and the push consumers of
    ACTIVITY and CRM that follow them; `Share.owner.run(stop)` keeps them."""
    partitions = await user_partitions(bus)
    table = await LeaseTable.open(bus, group, holder)

    def valid(p: int) -> bool:  # a lease that lapsed is not acknowledged on
        return owner.owns_partition(p)

    consumers = [
        partitioned_push(
            bus,
            stream,
            group,
            on_message,
            partitions=partitions,
            give_up=give_up,
            ack_wait=ack_wait,
            valid=valid,
        )
        for stream in SHORT
    ]

    async def gain(p: int) -> None:
        for c in consumers:
            await c.add(p)

    async def lose(p: int) -> None:
        for c in consumers:
            await c.remove(p)

    owner = PartitionOwner(table, partitions, table.ttl, gain, lose, expect=expect)
    return Share(owner, consumers)


async def open_leases(
    bus: Bus, group: str, *, expect: int = 1, holder: str | None = None
) -> PartitionOwner:
    """Leases alone, for a service that reads every event but acts only for the users of the
    partitions it holds (signals); `run(stop)` keeps them."""
    partitions = await user_partitions(bus)
    table = await LeaseTable.open(bus, group, holder)

    async def nothing(_p: int) -> None:
        return None

    return PartitionOwner(table, partitions, table.ttl, nothing, nothing, expect=expect)
