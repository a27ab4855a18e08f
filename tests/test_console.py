"""The operator console (`/ops`, `/ops/state`) as `nerve up` runs it: the ops service on its
own `ops` credential and the gateway on the `gateway` credential (which may read no stream
info, dead letters, signals, anomalies or registry), with the profiles and recommender services
on a real nats-server, and the page in headless Chromium: it renders, updates without a reload
when an event is dead-lettered, and refuses a site key."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from engine import credstore
from engine.broker import EmbeddedBroker
from engine.bus import Bus
from engine.gateway import SITE_KEY_HEADER, create_app
from engine.gateway.console import NO_OPS
from engine.ops import EXPERIMENTS, NO_DETECTOR, OpsState
from engine.services.ops import OpsService
from engine.settings import GatewaySettings, SiteKey
from nerve_client.ids import uuid7
from nerve_client.subjects import ANOMALIES, DEADLETTER
from tests.conftest import event, serving
from tests.reco_world import publish_world
from tests.test_credentials import as_user, refused
from tests.test_openapi import services

KEY = "console-site-key"
TOKEN = "console-internal-token"
INTERNAL = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "widgets" / "screenshots" / "ops.png"
SETTINGS = GatewaySettings(site_keys=(SiteKey(key=KEY, origins=("*",)),), internal_tokens=(TOKEN,))


def as_gateway(broker: EmbeddedBroker) -> Any:
    """The gateway app connecting as the `gateway` credential, as under `nerve up`."""
    assert broker.url is not None
    cred = credstore.component(broker.data_dir, "gateway")
    return create_app(SETTINGS, broker.url, 5, credential=cred)


@contextlib.asynccontextmanager
async def ops_service(broker: EmbeddedBroker) -> AsyncIterator[OpsService]:
    """The ops service on its own `ops` credential, running until the block ends."""
    assert broker.url is not None
    cred = credstore.component(broker.data_dir, "ops")
    bus = await Bus.connect(broker.url, "nerve-ops", timeout=5, credential=cred)
    service = OpsService(bus)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 10)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await bus.close()


@pytest.fixture
def violations(broker: EmbeddedBroker) -> Callable[[], list[str]]:
    """The permission violations the server logged since the test started."""
    log = broker.data_dir / "nats-server.log"
    start = log.stat().st_size

    def found() -> list[str]:
        text = log.read_bytes()[start:].decode(errors="replace")
        return [line for line in text.splitlines() if "Violation" in line]

    return found


@pytest.fixture
async def gateway(fresh: NATS, broker: EmbeddedBroker) -> AsyncIterator[str]:
    """The bank's catalogue and models, the profiles and recommender services, the ops
    service and a gateway (a site key, an internal token), each of the last two on its own
    credential; yields the gateway's URL."""
    await publish_world(fresh)
    async with services(fresh), ops_service(broker), serving(as_gateway(broker)) as url:
        yield url


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as c:
        yield c


async def until(check: Any, what: str, timeout: float = 20.0) -> Any:
    """Poll `check()` (sync or async) until it is truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def state(client: httpx.AsyncClient) -> OpsState:
    r = await client.get("/ops/state", headers=INTERNAL)
    assert r.status_code == 200, r.text
    return OpsState.model_validate(r.json())


async def test_the_state_refuses_a_site_key_and_shows_the_engine_to_an_internal_token(
    client: httpx.AsyncClient, violations: Callable[[], list[str]]
) -> None:
    """Before: under the gateway's own credential every part was a problem ("Cannot read")."""
    assert (await client.get("/ops/state", headers={SITE_KEY_HEADER: KEY})).status_code == 401
    as_bearer = await client.get("/ops/state", headers={"Authorization": f"Bearer {KEY}"})
    assert as_bearer.status_code == 403
    assert (await client.get(f"/ops/state?site_key={KEY}")).status_code == 401
    s = await state(client)
    assert s.nats_connected and not s.problems, s.problems
    assert {"ACTIVITY", "DEADLETTER", "RECOMMENDATIONS"} <= {r.name for r in s.streams}
    assert not [r for r in s.streams if r.name.startswith(("KV_", "OBJ_"))]
    assert {c.stream for c in s.consumers} >= {"ACTIVITY"}
    assert {m.slot for m in s.models} >= {"home", "similar", "trending"}
    assert all(m.card.get("version") == m.version for m in s.models)
    assert s.anomalies.note == NO_DETECTOR  # no anomalies service beats
    assert s.experiments.note == EXPERIMENTS
    assert s.deadletters is not None and s.deadletters.total == 0

    async def beating() -> bool:
        names = {name.split(".")[0] for name in (await state(client)).services}
        return names >= {"ops", "profiles"}

    await until(beating, "the ops and profiles services' heartbeats shown")
    assert not violations()  # neither credential asked for more than it may


async def test_the_gateway_credential_may_not_read_dead_letters_or_stream_info(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    """Least privilege: the internet-facing gateway reads no rejected bodies or stream info;
    its one new permission is the request to the ops service."""
    async with as_user(broker, credstore.component(broker.data_dir, "gateway")) as (nc, errors):
        js = nc.jetstream(timeout=1.0)
        with pytest.raises(Exception):  # noqa: B017 - nats-py answers a refusal with a timeout
            await js.get_msg(DEADLETTER, seq=1, direct=True)
        await refused(errors, f"$JS.API.DIRECT.GET.{DEADLETTER}")
        with pytest.raises(Exception):  # noqa: B017
            await js.stream_info(DEADLETTER)
        await refused(errors, f"$JS.API.STREAM.INFO.{DEADLETTER}")
        with pytest.raises(Exception):  # noqa: B017
            await js.streams_info()
        await refused(errors, "$JS.API.STREAM.LIST")
        with pytest.raises(Exception):  # noqa: B017
            await js.stream_info("KV_registry")
        await refused(errors, "$JS.API.STREAM.INFO.KV_registry")


async def test_the_state_is_503_with_one_reason_when_no_ops_service_runs(
    fresh: NATS, broker: EmbeddedBroker
) -> None:
    async with serving(as_gateway(broker)) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.get("/ops/state", headers=INTERNAL)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"detail": NO_OPS}
        assert (await http.get("/ops/state", headers={SITE_KEY_HEADER: KEY})).status_code == 401
        metrics = (await http.get("/metrics")).text
        assert "nerve_broker_sample_ok 0.0" in metrics


async def test_events_per_second_and_dead_letters_by_source_and_reason(
    client: httpx.AsyncClient,
) -> None:
    await state(client)  # the first sample
    good = [event(user_id=None, anonymous_id=f"v-{i}") for i in range(5)]
    assert (
        await client.post("/v1/events", json=good, headers={SITE_KEY_HEADER: KEY})
    ).status_code == 202
    bad = [event(id="not-an-id"), event("no_such_type"), event("other_type")]
    r = await client.post("/v1/events", json=bad, headers={SITE_KEY_HEADER: KEY})
    assert r.status_code == 422, r.text

    async def counted() -> OpsState | None:
        s = await state(client)
        dl = s.deadletters
        return s if dl and dl.total == 3 and len(dl.latest) == 3 else None

    await asyncio.sleep(1.05)  # a second sample at least a second after the first
    s = await until(counted, "three dead letters tallied")
    activity = next(r for r in s.streams if r.name == "ACTIVITY")
    assert activity.history and max(activity.history) > 0
    assert s.deadletters is not None
    by = {(c.source, c.reason): c.count for c in s.deadletters.by_reason}
    assert sum(by.values()) == 3 and {src for src, _ in by} == {"gateway"}
    unknown = [n for (_, reason), n in by.items() if "unknown event type" in reason]
    assert unknown == [2], by  # 'no_such_type' and 'other_type' are one reason


async def test_anomalies_are_shown_and_a_missing_detector_is_said(
    client: httpx.AsyncClient, fresh: NATS
) -> None:
    js = fresh.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(ANOMALIES)
    s = await state(client)
    assert not s.anomalies.available and s.anomalies.note == NO_DETECTOR  # no stream
    await js.add_stream(name=ANOMALIES, subjects=["anomalies.>"], allow_direct=True)
    anomaly = {
        "id": uuid7(),
        "type": "anomaly_detected",
        "time": "2026-01-01T00:00:00+00:00",
        "user_id": "ana",
        "properties": {"detector": "rate", "score": 9.5, "baseline": 1.0},
    }
    await js.publish("anomalies.rate.ana", orjson.dumps(anomaly))
    s = await state(client)
    assert s.anomalies.available and s.anomalies.note == NO_DETECTOR  # stored, nobody beating
    (entry,) = s.anomalies.entries
    assert entry.type == "anomaly_detected" and entry.properties["score"] == 9.5
    beat = {"at": time.time(), "done": 1, "behind": 0, "moved_at": time.time()}
    await (await Bus(fresh).kv("health")).put("anomalies.test-1", orjson.dumps(beat))
    s = await state(client)
    assert s.anomalies.available and s.anomalies.note is None
    assert s.services["anomalies.test-1"]["done"] == 1


async def test_the_page_renders_updates_live_on_a_dead_letter_and_refuses_a_site_key(
    gateway: str, client: httpx.AsyncClient
) -> None:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        missing: list[str] = []  # before: /favicon.ico, 404 on every visit
        page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
        await page.goto(gateway + "/ops")
        await page.fill("#token", KEY)  # a site key is no operator credential
        await page.click("#login button[type=submit]")
        await page.wait_for_selector("#login-error:has-text('refused (403)')")
        assert await page.is_hidden("#console")
        assert await page.evaluate("sessionStorage.getItem('nerve.ops.token')") is None

        await page.fill("#token", TOKEN)
        await page.click("#login button[type=submit]")
        await page.wait_for_selector("#streams tr[data-stream=ACTIVITY]")
        await page.wait_for_selector("#models [data-slot=home]")
        assert await page.text_content("#anomalies-note") == NO_DETECTOR
        assert "no dead letters" in (await page.text_content("#dl-latest") or "")
        navigations = len([u for u in asked if u.endswith("/ops")])

        bad = [event("no_such_type", properties={})]
        r = await client.post("/v1/events", json=bad, headers={SITE_KEY_HEADER: KEY})
        assert r.status_code == 422
        await page.wait_for_selector("#dl-reasons tr[data-source=gateway]", timeout=20_000)
        await page.wait_for_selector("#dl-latest li[data-seq]")
        assert "unknown event type" in (await page.text_content("#dl-latest") or "")
        assert len([u for u in asked if u.endswith("/ops")]) == navigations  # no reload
        assert not [u for u in asked if not u.startswith(gateway)]  # no CDN
        assert missing == []
        for _ in range(3):  # a few polls, so the sparklines have a line to draw
            await client.post("/v1/events", json=[event(user_id=None, anonymous_id="x")],
                              headers={SITE_KEY_HEADER: KEY})  # fmt: skip
            before = await page.get_attribute("body", "data-updated")
            await page.wait_for_function(f"document.body.dataset.updated !== '{before}'")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        await browser.close()


def test_dead_letter_reasons_group_by_shape_but_keep_names_whole() -> None:
    """Before: every digit became N, so a reason read "must be an RFC N date-time"."""
    from engine.ops.deadletters import reason_key

    assert reason_key("time: must be an RFC 3339 date-time") == (
        "time: must be an RFC 3339 date-time"
    )
    assert reason_key("body over 1048576 bytes") == reason_key("body over 2000000 bytes")
    assert reason_key("unknown event type 'x'") == reason_key("unknown event type 'y'")


async def test_the_page_names_its_icon_so_browsers_ask_for_no_favicon(
    client: httpx.AsyncClient,
) -> None:
    """Before: no icon link, so every visit cost a `GET /favicon.ico` answered 404."""
    page = await client.get("/ops")
    assert page.status_code == 200 and '<link rel="icon" href="data:,">' in page.text
