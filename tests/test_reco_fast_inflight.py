"""Two batches in flight (`engine.recommender.inflight`): the next batch is folded and computed
while the previous one waits for the broker, a user's lists stay strictly ordered and reflect
every event, and the inputs are acknowledged in delivery order (against a real nats-server)."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NATS

from engine.bus.consumer import Delivery
from engine.recommender.inflight import InFlight
from tests.test_reco_batch import _deliveries, _service
from tests.test_recommender_service import act, lists


async def test_the_next_batch_is_computed_while_the_previous_waits_for_its_acks(
    fresh: NATS,
) -> None:
    from tests.reco_world import publish_world

    nc = fresh
    await publish_world(nc)
    service = await _service(nc)
    stop = asyncio.Event()
    users = [f"f{u}" for u in range(6)]
    items = ["card-gold", "savings-plus", "loan-car"]
    events = [act(u, "item_viewed", item) for item in items for u in users]
    deliveries = await _deliveries(nc, events)
    batches = [deliveries[i : i + 6] for i in range(0, 18, 6)]  # each user in every batch
    log: list[tuple[str, int]] = []
    process = service.process

    async def traced(ds: list[Delivery]) -> None:
        log.append(("start", ds[0].seq))
        await process(ds)
        log.append(("stored", ds[0].seq))

    service.process = traced  # type: ignore[method-assign]
    recompute = service._recompute

    async def computing(*args: Any, **kw: Any) -> None:
        log.append(("computing", service.stats.batches))  # folded; its lists come next
        await recompute(*args, **kw)

    service._recompute = computing  # type: ignore[method-assign]
    acked: list[int] = []

    async def ack(ds: list[Delivery]) -> None:
        acked.append(ds[0].seq)

    flight = InFlight(lambda ds: service._process_until_done(ds, stop), ack)
    for batch in batches:
        assert await flight.submit(batch)
    assert await flight.flush()
    firsts = [b[0].seq for b in batches]
    assert acked == firsts  # in delivery order, each once
    # batch 2 was folded (and waits for its users) before batch 1's lists were stored
    assert log.index(("computing", 2)) < log.index(("stored", firsts[0]))
    assert log.index(("computing", 3)) < log.index(("stored", firsts[1]))
    for u in users:
        stored = await lists(nc, u, "similar")
        seqs = [s["properties"]["activity_seq"] for s in stored]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (u, seqs)
        assert stored[-1]["properties"]["anchor"] == "loan-car"  # the last event is reflected
        assert seqs[-1] == batches[2][users.index(u)].seq
    assert service.stats.conflicts == 0
