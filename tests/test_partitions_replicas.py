"""Replicas sharing partitions through leases, on a real nats-server: each receives only its
share, a user's events stay in order in one replica, a joining replica takes half, and a
killed replica's partitions are served by the survivor once its leases expire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Bus, Publisher
from engine.bus.consumer import Delivery
from engine.bus.decode import Record, decode
from engine.bus.provision import provision
from engine.partitions import Share, open_share, partition_of
from engine.settings import StreamSettings
from nerve_client.events import parse_event
from nerve_client.subjects import split_user_subject, stored_partition
from tests.conftest import event

LEASE_S = 2.0
PARTITIONS = 8


@pytest.fixture
async def leased(fresh: NATS) -> NATS:
    """Fresh streams with 8 partitions and 2 s leases (so a takeover is quick)."""
    js = fresh.jetstream()
    for name in ("ACTIVITY", "CRM", "KV_partitions"):
        await js.delete_stream(name)
    await provision(js, StreamSettings(partitions=PARTITIONS, lease_s=LEASE_S))
    return fresh


@dataclass
class Replica:
    """A bare partitioned consumer group member: records and acknowledges every delivery."""

    share: Share
    got: list[tuple[str, int, int]] = field(default_factory=list)  # (token, seq, partition)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def held(self) -> set[int]:
        return self.share.owner.held

    def deliveries(self) -> int:
        return sum(sum(c.received.values()) for c in self.share.consumers)


async def start_replica(nc: NATS, expect: int = 1, group: str = "grp") -> Replica:
    bus = Bus(nc)
    box: list[Replica] = []

    def on_message(d: Delivery) -> None:
        record = decode(d.stream, d.seq, d.subject, d.data)
        assert isinstance(record, Record), record
        p = stored_partition(d.subject)
        assert p is not None and r.share.owner.owns_partition(p), (p, r.held)
        r.got.append((record.token, d.seq, p))
        task = asyncio.ensure_future(consumer_of(d).ack(d))
        pending.add(task)
        task.add_done_callback(pending.discard)

    pending: set[asyncio.Future[None]] = set()
    share = await open_share(bus, group, on_message, give_up=None, ack_wait=30.0, expect=expect)
    r = Replica(share)
    box.append(r)

    def consumer_of(d: Delivery) -> object:
        return next(c for c in share.consumers if c.stream == d.stream)

    await share.start()
    r.task = asyncio.create_task(share.owner.run(r.stop))
    await asyncio.wait_for(share.owner.first_round.wait(), 10)
    return r


async def stop_replica(r: Replica) -> None:
    r.stop.set()
    assert r.task is not None
    await asyncio.wait_for(r.task, 10)
    await r.share.stop()


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until `check()` holds (a generous bound so a slow machine does not fail it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.05)


def users(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


async def publish(nc: NATS, people: list[str], rounds: int) -> int:
    events = [
        parse_event(event("page_viewed", user_id=u, properties={"path": f"/p{r}"}))
        for r in range(rounds)
        for u in people
    ]
    await Publisher(nc).publish_events(events)
    return len(events)


def in_order(got: list[tuple[str, int, int]]) -> bool:
    by_user: dict[str, list[int]] = {}
    for token, seq, _ in got:
        by_user.setdefault(token, []).append(seq)
    return all(seqs == sorted(seqs) for seqs in by_user.values())


async def test_each_replica_receives_only_its_share(leased: NATS) -> None:
    a = await start_replica(leased, expect=2)
    b = await start_replica(leased, expect=2)
    try:
        assert a.held and b.held and not (a.held & b.held)
        assert a.held | b.held == set(range(PARTITIONS))
        n = await publish(leased, users(120), rounds=3)
        await eventually(lambda: len(a.got) + len(b.got) >= n)
        # every event was delivered once in all: N deliveries for two replicas, not 2N
        assert a.deliveries() + b.deliveries() == n
        assert 0.2 * n < a.deliveries() < 0.8 * n
        for r in (a, b):
            assert {p for _, _, p in r.got} <= r.held
        assert {t for t, _, _ in a.got}.isdisjoint({t for t, _, _ in b.got})
        assert in_order(a.got) and in_order(b.got)
        for token, _, p in a.got + b.got:
            assert p == partition_of(token, PARTITIONS)
    finally:
        await stop_replica(a)
        await stop_replica(b)


async def test_a_joining_replica_takes_half_and_nothing_is_lost(leased: NATS) -> None:
    a = await start_replica(leased)
    try:
        assert a.held == set(range(PARTITIONS))
        first = await publish(leased, users(60), rounds=2)
        await eventually(lambda: len(a.got) >= first)
        b = await start_replica(leased)
        try:
            await eventually(lambda: len(a.held) == len(b.held) == PARTITIONS // 2)
            second = await publish(leased, users(60), rounds=2)
            await eventually(lambda: len(a.got) + len(b.got) >= first + second)
            seen = [(t, s) for t, s, _ in a.got + b.got]
            assert len(set(seen)) == first + second  # nothing lost, nothing twice
            assert in_order(a.got + b.got)  # one user's events, in log order, by one replica
            assert {p for _, _, p in b.got} <= b.held
        finally:
            await stop_replica(b)
        # b stopped cleanly: it released its leases, a takes them back without waiting
        await eventually(lambda: a.held == set(range(PARTITIONS)))
    finally:
        await stop_replica(a)


async def test_events_of_a_partition_nobody_holds_yet_wait_for_its_first_owner(
    leased: NATS,
) -> None:
    """Before: a partition's consumer was created at its first claim, starting at the next
    message, so what arrived while nobody held it (one replica up, expecting two) was never
    delivered. Every partition's consumer now exists from the first replica's start."""
    a = await start_replica(leased, expect=2)
    try:
        assert 0 < len(a.held) < PARTITIONS
        n = await publish(leased, users(80), rounds=2)
        await eventually(lambda: len(a.got) > 0)  # its own share flows meanwhile
        b = await start_replica(leased, expect=2)
        try:
            await eventually(lambda: len(a.got) + len(b.got) >= n)
            assert len({(t, s) for t, s, _ in a.got + b.got}) == n
        finally:
            await stop_replica(b)
    finally:
        await stop_replica(a)


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def test_a_killed_replicas_partitions_go_to_the_survivor_after_the_lease(
    leased: NATS, nats_url: str
) -> None:
    survivor = await start_replica(leased, expect=2)
    async with connection(nats_url) as other:
        doomed = await start_replica(other, expect=2)
        lost = set(doomed.held)
        assert lost and not (lost & survivor.held)
        # killed: the task is cancelled and the connection dropped, nothing is released
        assert doomed.task is not None
        doomed.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await doomed.task
    n = await publish(leased, users(80), rounds=2)
    # until the leases expire, the survivor does not serve the dead replica's partitions
    assert not (lost & survivor.held)
    await eventually(lambda: survivor.held == set(range(PARTITIONS)))
    await eventually(lambda: len(survivor.got) >= n)
    assert len({(t, s) for t, s, _ in survivor.got}) == n
    assert {p for _, _, p in survivor.got} >= lost
    assert in_order(survivor.got)
    await stop_replica(survivor)


def test_the_stored_subject_names_its_user() -> None:
    token, etype = split_user_subject("activity.alice.page_viewed.3")
    assert (token, etype) == ("alice", "page_viewed")
    assert orjson.loads(b"{}") == {}


async def test_every_partitions_consumer_starts_at_one_sequence_even_while_events_arrive(
    leased: NATS,
) -> None:
    """Before: each partition's first consumer started at *its* next message, created one
    after the other, so an event stored meanwhile in a partition whose consumer came later was
    skipped (the per-service-credentials slice test lost its visitor's list that way)."""
    bus = Bus(leased)
    share = await open_share(bus, "early", lambda d: None, give_up=None, ack_wait=30.0)
    sending = asyncio.create_task(publish(leased, users(200), rounds=3))
    await share.start()
    await sending
    js = leased.jetstream()
    floors = set()
    for stream in ("ACTIVITY", "CRM"):
        for p in range(PARTITIONS):
            info = await js.consumer_info(stream, f"early-p{p:02d}")
            floors.add((stream, info.ack_floor.stream_seq if info.ack_floor else 0))
    assert len({f for s, f in floors if s == "ACTIVITY"}) == 1, floors
    await share.stop()
