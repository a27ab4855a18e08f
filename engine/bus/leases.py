"""Partition leases in the KV bucket `partitions`, and how many partitions a stream has.

A lease is the key `<service>.lease.<p>`, holding the holder's id; a member key
`<service>.member.<holder>` says a replica is alive. The bucket's max age is the lease time:
the server removes a key that was not written for that long, so a crashed holder's leases
vanish by themselves, timed by the server's clock alone.

* `claim` stores the lease only if its subject is empty (`Nats-Expected-Last-Subject-Sequence:
  0`), so exactly one of several claimants wins;
* `renew` stores it again only if its last sequence is still the one this holder wrote, so a
  holder whose lease expired and was claimed by another learns it and cannot take it back;
* `release` deletes the holder's own revision by sequence (gone, not a delete marker), so the
  subject is empty again and the next `claim` wins at once. A revision already replaced by
  another holder's is not touched.

`PartitionOwner` (`engine.partitions`) runs the rounds; this module only talks to the bucket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from engine.bus.bus import Bus
from engine.bus.consumer import Delivery
from engine.bus.gaveup import GiveUp
from engine.bus.partitioned import PartitionedPush
from engine.bus.pipeline import EXPECTED_LAST_SUBJECT_SEQ
from engine.settings import ACK_WAIT_S
from nerve_client.errors import NerveError
from nerve_client.subjects import SHORT, transform_partitions

BUCKET = "partitions"
STREAM = f"KV_{BUCKET}"


def holder_id() -> str:
    """A replica's id: host, process and a random part (a restart is a new holder)."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{host[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaseTable:
    """The leases of one service (`recommender`, `signals`) for one holder."""

    def __init__(self, js: JetStreamContext, service: str, holder: str, ttl: float) -> None:
        self._js = js
        self.service = service
        self.holder = holder
        self.ttl = ttl
        """The lease time: the bucket's max age (`nerve init`, `StreamSettings.lease_s`)."""
        self._revisions: dict[int, int] = {}
        self._member = 0

    @classmethod
    async def open(cls, bus: Bus, service: str, holder: str | None = None) -> LeaseTable:
        """The leases of `service` in the provisioned bucket (`NerveError` if it is missing)."""
        js = bus._js
        try:
            info = await js.stream_info(STREAM)
        except NotFoundError:
            raise NerveError(f"no KV bucket {BUCKET!r}: run `nerve init` first") from None
        return cls(js, service, holder or holder_id(), float(info.config.max_age or 10.0))

    def _subject(self, key: str) -> str:
        return f"$KV.{BUCKET}.{self.service}.{key}"

    async def _store(self, partition: int, expected: int) -> bool:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        try:
            ack = await self._js.publish(
                self._subject(f"lease.{partition}"), self.holder.encode(), headers=headers
            )
        except APIError as exc:
            if exc.err_code == 10071:  # wrong last sequence: someone else holds it
                self._revisions.pop(partition, None)
                return False
            raise
        self._revisions[partition] = ack.seq
        return True

    async def heartbeat(self) -> int:
        """Renew this holder's member key; return how many members are alive (itself too)."""
        ack = await self._js.publish(self._subject(f"member.{self.holder}"), b"")
        self._member = ack.seq
        info = await self._js.stream_info(STREAM, subjects_filter=self._subject("member.*"))
        return max(1, len(info.state.subjects or {}))

    async def claim(self, partition: int) -> bool:
        """Take a free partition; False when another holder has it."""
        return await self._store(partition, 0)

    async def renew(self, partition: int) -> bool:
        """Extend a lease this holder has; False when it expired (and may be another's)."""
        revision = self._revisions.get(partition)
        if revision is None:
            return False
        return await self._store(partition, revision)

    async def release(self, partition: int) -> None:
        """Give a lease up now (its next claimant need not wait for it to expire)."""
        revision = self._revisions.pop(partition, None)
        if revision is not None:
            with contextlib.suppress(NotFoundError, APIError):
                await self._js.delete_msg(STREAM, revision)

    async def leave(self) -> None:
        """No longer a member (a clean stop): the others' fair share grows at once."""
        if self._member:
            with contextlib.suppress(NotFoundError, APIError):
                await self._js.delete_msg(STREAM, self._member)
            self._member = 0

    async def holders(self) -> dict[int, str]:
        """Who holds each leased partition now."""
        info = await self._js.stream_info(STREAM, subjects_filter=self._subject("lease.*"))
        out: dict[int, str] = {}
        for subject in info.state.subjects or {}:
            partition = int(subject.rsplit(".", 1)[-1])
            with contextlib.suppress(NotFoundError):
                msg = await self._js.get_msg(STREAM, subject=subject, direct=True)
                out[partition] = (msg.data or b"").decode()
        return out

    async def free(self, partitions: int) -> list[int]:
        """The partitions (of `partitions`) that nobody holds a lease on."""
        info = await self._js.stream_info(STREAM, subjects_filter=self._subject("lease.*"))
        taken = {int(s.rsplit(".", 1)[-1]) for s in (info.state.subjects or {})}
        return [p for p in range(partitions) if p not in taken]


async def stream_partitions(bus: Bus, stream: str) -> int:
    """How many partitions a user stream (ACTIVITY, CRM) is stored in; 0 when it is not
    partitioned (an older deployment: its events stay `<prefix>.<user>.<type>`)."""
    info = await bus._js.stream_info(stream)
    transform = info.config.subject_transform
    return transform_partitions(transform.dest if transform else None)


async def user_partitions(bus: Bus) -> int:
    """The partition count shared by ACTIVITY and CRM (they are provisioned together); 0
    when unpartitioned. Refuses a deployment where they differ."""
    counts = {stream: await stream_partitions(bus, stream) for stream in SHORT}
    if len(set(counts.values())) != 1:
        raise ValueError(f"ACTIVITY and CRM are partitioned differently: {counts}")
    return next(iter(counts.values()))


def partitioned_push(
    bus: Bus,
    stream: str,
    durable: str,
    on_message: Callable[[Delivery], None],
    *,
    partitions: int,
    give_up: GiveUp | None = None,
    ack_wait: float = ACK_WAIT_S,
    valid: Callable[[int], bool] | None = None,
) -> PartitionedPush:
    """The per-partition push consumers of `stream` (`engine.bus.partitioned`)."""
    return PartitionedPush(
        bus._js,
        stream,
        durable,
        on_message,
        partitions=partitions,
        give_up=give_up,
        ack_wait=ack_wait,
        valid=valid,
    )
