import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from engine.bus import BUCKETS, OBJECT_STORES, provision, streams
from engine.settings import StreamSettings
from nerve_client.errors import ProvisionError


async def wipe(nc: NATS) -> None:
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)


async def test_provisioning_twice_creates_then_changes_nothing(nc: NATS) -> None:
    await wipe(nc)
    first = await provision(nc.jetstream())
    expected = {s.name for s in streams(StreamSettings())}
    expected |= {f"kv:{b.name}" for b in BUCKETS} | {f"obj:{n}" for n, _ in OBJECT_STORES}
    assert set(first.created) == expected | {"kv:tombstones/salt"}
    second = await provision(nc.jetstream())
    assert not second.changed
    assert set(second.unchanged) == expected


async def test_streams_follow_the_design(nc: NATS) -> None:
    await wipe(nc)
    await provision(nc.jetstream(), StreamSettings(duplicate_window_s=120))
    js = nc.jetstream()
    activity = (await js.stream_info("ACTIVITY")).config
    assert activity.subjects == ["activity.>"]
    assert activity.storage == StorageType.FILE
    assert activity.duplicate_window == pytest.approx(120)
    catalog = (await js.stream_info("CATALOG")).config
    assert catalog.max_msgs_per_subject == 1
    reco = (await js.stream_info("RECOMMENDATIONS")).config
    assert reco.max_msgs_per_subject == 20 and reco.max_age and reco.max_age > 0
    profiles = (await js.stream_info("KV_profiles")).config
    assert profiles.allow_direct is True


async def test_a_compatible_change_is_applied_in_place(nc: NATS) -> None:
    await wipe(nc)
    await provision(nc.jetstream())
    report = await provision(nc.jetstream(), StreamSettings(activity_max_age_days=30))
    assert report.updated["ACTIVITY"] == ["max_age"]
    info = await nc.jetstream().stream_info("ACTIVITY")
    assert info.config.max_age == pytest.approx(30 * 86400)


async def test_an_impossible_change_is_refused_before_anything_changes(nc: NATS) -> None:
    await wipe(nc)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="ACTIVITY", subjects=["activity.>"], storage=StorageType.MEMORY)
    )
    with pytest.raises(ProvisionError, match="storage") as info:
        await provision(js)
    assert info.value.name == "ACTIVITY" and info.value.field == "storage"
    names = {i.config.name for i in await js.streams_info()}
    assert names == {"ACTIVITY"}, "nothing else may be created after a refusal"
