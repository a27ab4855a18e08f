"""Partitioned user streams: the server's partition of a user is the engine's, events are
stored with a partition token and still read, replayed and erased per user, and a partition
count is never changed silently."""

from __future__ import annotations

import random
import string

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from engine.bus import Bus, decode, provision
from engine.bus.decode import Record
from engine.bus.leases import stream_partitions, user_partitions
from engine.bus.reader import read_all
from engine.partitions import PartitionOwner, partition_of
from engine.settings import DEFAULT_PARTITIONS, StreamSettings
from nerve_client.errors import ProvisionError
from nerve_client.subjects import (
    ACTIVITY,
    CRM,
    logical_subject,
    split_user_subject,
    stored_partition,
    type_filter,
    user_filters,
    user_token,
)
from tests.conftest import event


async def wipe(nc: NATS) -> None:
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)


def odd_ids(n: int) -> list[str]:
    """User ids that exercise the token escapes (`~` hex) as well as plain ones."""
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "@.+_- é~ü"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)] + [
        "alice@bank.com",
        "0",
        "16",
        "x" * 128,
    ]


def test_partition_of_is_fnv1a_mod_n() -> None:
    # FNV-1a 32 of "a" is 0xE40C292C (the published test vector)
    assert partition_of("a", 1 << 31) == 0xE40C292C % (1 << 31)
    assert partition_of("anything", 1) == 0 and partition_of("anything", 0) == 0


async def test_the_engine_computes_the_partition_the_server_stores(fresh: NATS) -> None:
    bus = Bus(fresh)
    assert await user_partitions(bus) == DEFAULT_PARTITIONS
    ids = odd_ids(300)
    events = [event("item_viewed", user_id=u) for u in ids]
    js = fresh.jetstream()
    for e in events:
        token = user_token(e["user_id"])
        await js.publish(f"activity.{token}.item_viewed", orjson.dumps(e))
    stored = await read_all(js, ACTIVITY)
    assert len(stored) == len(ids)
    seen = set()
    for (_, subject, _), e in zip(stored, events, strict=True):
        token = user_token(e["user_id"])
        assert stored_partition(subject) == partition_of(token, DEFAULT_PARTITIONS), subject
        assert logical_subject(subject) == f"activity.{token}.item_viewed"
        seen.add(stored_partition(subject))
    assert seen == set(range(DEFAULT_PARTITIONS))  # 300 users reach every partition


async def test_stored_partitioned_events_decode_and_are_found_per_user(fresh: NATS) -> None:
    js = fresh.jetstream()
    alice = user_token("alice@bank.com")
    for etype in ["page_viewed", "item_viewed", "page_viewed"]:
        e = event(etype, user_id="alice@bank.com")
        await js.publish(f"activity.{alice}.{etype}", orjson.dumps(e))
    await js.publish("activity.bob.page_viewed", orjson.dumps(event("page_viewed", user_id="bob")))
    mine = await read_all(js, ACTIVITY, user_filters(alice)[ACTIVITY])
    assert [split_user_subject(s)[0] for _, s, _ in mine] == [alice] * 3
    records = [decode(ACTIVITY, seq, s, d) for seq, s, d in mine]
    assert all(isinstance(r, Record) and r.token == alice for r in records)
    # a filter by type (stats) still finds every user's events of that type
    assert len(await read_all(js, ACTIVITY, type_filter("page_viewed"))) == 3


async def test_a_payload_about_another_user_is_still_refused_when_partitioned(
    fresh: NATS,
) -> None:
    js = fresh.jetstream()
    await js.publish(
        "activity.mallory.page_viewed", orjson.dumps(event("page_viewed", user_id="bob"))
    )
    ((seq, subject, data),) = await read_all(js, ACTIVITY)
    refused = decode(ACTIVITY, seq, subject, data)
    assert not isinstance(refused, Record) and "belongs on activity.bob" in refused.reason


async def test_an_unpartitioned_stream_keeps_working_and_is_not_changed_silently(
    nc: NATS,
) -> None:
    await wipe(nc)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=ACTIVITY, subjects=["activity.>"]))
    await js.add_stream(StreamConfig(name=CRM, subjects=["crm.>"]))
    await js.publish("activity.bob.page_viewed", orjson.dumps(event("page_viewed", user_id="bob")))
    await provision(js)  # partitions unset: an existing stream keeps what it has
    bus = Bus(nc)
    assert await stream_partitions(bus, ACTIVITY) == 0
    await js.publish("activity.bob.page_viewed", orjson.dumps(event("page_viewed", user_id="bob")))
    subjects = [s for _, s, _ in await read_all(js, ACTIVITY, user_filters("bob")[ACTIVITY])]
    assert subjects == ["activity.bob.page_viewed"] * 2
    with pytest.raises(ProvisionError, match="partitions") as refused:
        await provision(js, StreamSettings(partitions=8))
    assert refused.value.field == "partitions" and refused.value.have == 0
    assert await stream_partitions(bus, ACTIVITY) == 0  # refused before anything changed


async def test_a_different_partition_count_is_refused(nc: NATS) -> None:
    await wipe(nc)
    js = nc.jetstream()
    await provision(js, StreamSettings(partitions=4))
    assert await user_partitions(Bus(nc)) == 4
    assert not (await provision(js)).changed  # unset keeps 4
    assert not (await provision(js, StreamSettings(partitions=4))).changed
    with pytest.raises(ProvisionError) as refused:
        await provision(js, StreamSettings(partitions=16))
    assert (refused.value.have, refused.value.want) == (4, 16)


class Board:
    """In-memory leases behind the `engine.partitions.Leases` seam: who holds what."""

    def __init__(self) -> None:
        self.holders: dict[int, str] = {}
        self.members: set[str] = set()


class FakeLeases:
    def __init__(self, board: Board, holder: str) -> None:
        self.board, self.holder = board, holder

    async def heartbeat(self) -> int:
        self.board.members.add(self.holder)
        return len(self.board.members)

    async def claim(self, partition: int) -> bool:
        return self.board.holders.setdefault(partition, self.holder) == self.holder

    async def renew(self, partition: int) -> bool:
        return self.board.holders.get(partition) == self.holder

    async def release(self, partition: int) -> None:
        if self.board.holders.get(partition) == self.holder:
            del self.board.holders[partition]

    async def leave(self) -> None:
        self.board.members.discard(self.holder)

    async def free(self, partitions: int) -> list[int]:
        return [p for p in range(partitions) if p not in self.board.holders]


def owner_on(board: Board, holder: str, log: list[tuple[str, int]]) -> PartitionOwner:
    async def gain(p: int) -> None:
        log.append(("+" + holder, p))

    async def lose(p: int) -> None:
        log.append(("-" + holder, p))

    return PartitionOwner(FakeLeases(board, holder), 8, 10.0, gain, lose)


async def test_a_lease_taken_by_another_stops_being_served_at_the_next_round() -> None:
    board, log = Board(), []
    a = owner_on(board, "a", log)
    await a.round()
    assert a.held == set(range(8))
    board.holders[3] = "b"  # say a's lease expired and b claimed it
    await a.round()
    assert 3 not in a.held and ("-a", 3) in log


async def test_a_replica_over_its_share_hands_the_extras_over() -> None:
    board, log = Board(), []
    a, b = owner_on(board, "a", log), owner_on(board, "b", log)
    await a.round()
    await b.round()  # b is a member now, but everything is a's
    assert not b.held
    await a.round()  # a sees two members: keeps 4, releases 4 (consumers stopped first)
    await b.round()
    assert len(a.held) == len(b.held) == 4 and not (a.held & b.held)
    for p in b.held:
        assert log.index(("-a", p)) < log.index(("+b", p))
    await b.release_all()
    await a.round()
    assert a.held == set(range(8))
