import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus import Outgoing, Publisher
from engine.bus.reader import read_all
from engine.errors import PublishError
from engine.events import parse_event, parse_event_json
from tests.conftest import count, event


async def test_published_events_read_back_identical_and_in_order(fresh: NATS) -> None:
    events = [parse_event(event("item_viewed", user_id=f"u{i % 7}")) for i in range(300)]
    acks = await Publisher(fresh).publish_events(events)
    assert [a.seq for a in acks] == list(range(1, 301))
    got = await read_all(fresh.jetstream(), "ACTIVITY")
    assert [parse_event_json(data) for _, _, data in got] == events
    assert [subject for _, subject, _ in got] == [e.subject for e in events]


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
