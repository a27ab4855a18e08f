import asyncio

import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.broker import EmbeddedBroker
from engine.bus import Outgoing, Publisher
from engine.bus.reader import read_all
from nerve_client.errors import PublishError
from nerve_client.events import parse_event, parse_event_json
from nerve_client.subjects import logical_subject
from tests.conftest import count, event, reset_streams


async def test_published_events_read_back_identical_and_in_order(fresh: NATS) -> None:
    events = [parse_event(event("item_viewed", user_id=f"u{i % 7}")) for i in range(300)]
    acks = await Publisher(fresh).publish_events(events)
    assert [a.seq for a in acks] == list(range(1, 301))
    got = await read_all(fresh.jetstream(), "ACTIVITY")
    assert [parse_event_json(data) for _, _, data in got] == events
    assert [logical_subject(subject) for _, subject, _ in got] == [e.subject for e in events]


async def test_an_event_sent_twice_is_stored_once(fresh: NATS) -> None:
    events = [parse_event(event()) for _ in range(50)]
    publisher = Publisher(fresh)
    first = await publisher.publish_events(events)
    again = await publisher.publish_events([*events, parse_event(event())])
    assert not any(a.duplicate for a in first)
    assert all(a.duplicate for a in again[:50]) and not again[50].duplicate
    assert await count(fresh, "ACTIVITY") == 51


async def test_a_subject_without_a_stream_raises_a_clear_error(fresh: NATS) -> None:
    with pytest.raises(PublishError, match="no stream"):
        await Publisher(fresh, ack_timeout=2).publish([Outgoing("nowhere.x", b"{}", "id-1")])


async def test_big_batches_are_pipelined_through_a_small_window(fresh: NATS) -> None:
    publisher = Publisher(fresh, window=64)
    msgs = [
        Outgoing(f"activity.u{i}.page_viewed", orjson.dumps({"i": i}), f"m{i}") for i in range(2000)
    ]
    acks = await publisher.publish(msgs)
    assert len({a.seq for a in acks}) == 2000
    assert await count(fresh, "ACTIVITY") == 2000


async def test_streams_reset_between_tests_start_empty_while_a_removal_lags(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    """The cause of a 2051 == 2000 failure above: nats-server renames a deleted stream's
    directory to `.<name>` and removes it in the background; a delete of the same name while
    that is still on disk silently keeps the files, and the re-created stream recovers them.
    Here a removal that lags (a stand-in `.ACTIVITY` left for 0.5 s) must not resurrect the
    51 messages: `reset_streams` waits for it."""
    store = broker.data_dir / "jetstream"
    [streams] = list(store.glob("jetstream/*/streams"))
    publisher = Publisher(fresh)
    await publisher.publish_events([parse_event(event()) for _ in range(51)])
    lagging = streams / ".ACTIVITY"
    lagging.mkdir()
    asyncio.get_running_loop().call_later(0.5, lagging.rmdir)
    await reset_streams(fresh, store)
    assert await count(fresh, "ACTIVITY") == 0
