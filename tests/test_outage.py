"""The outage contract: while the broker is away the gateway answers only 202 or 503 (with
`Retry-After`), each within its publish budget; clients that re-send what was not accepted,
with the same ids, leave every event stored exactly once.

The broker here is a nats-server child of this module on a fixed port with its own store, so
it can be killed and started again where the gateway will find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from engine.broker import find_server_binary
from engine.bus import Bus, Outgoing, connect, provision
from engine.bus.reader import read_all
from engine.gateway import SITE_KEY_HEADER, create_app
from engine.settings import GatewaySettings, SiteKey, StreamSettings
from nerve_client.errors import BrokerDown, PublishError
from nerve_client.events import parse_event
from tests.conftest import event, serving

KEY = "outage-site-key"
BUDGET_S = 2.0
"""The gateway's publish budget in these tests (`GatewaySettings.ack_timeout_s`)."""
SLACK_S = 1.5
"""What an answer may take beyond the budget on a loaded two-core box (HTTP, JSON, the loop)."""
OUTAGE_S = 30.0
POSTERS = 6
BATCH = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A nats-server child on a fixed port and store, which a test may kill and restart."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.conf = store / "nats.conf"
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\njetstream {{ store_dir: {str(store)!r} }}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [find_server_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("outage-broker"))
    srv.start()
    yield srv
    srv.kill()


async def ready(url: str) -> None:
    """Wait until the server at `url` answers and its streams exist."""
    nc = await connect(url, "outage-test", timeout=15)
    try:
        await provision(nc.jetstream(), StreamSettings())
    finally:
        await nc.close()


def make_app(url: str) -> FastAPI:
    key = SiteKey(key=KEY, rate_per_s=1e6, burst=1_000_000)
    return create_app(GatewaySettings(site_keys=(key,), ack_timeout_s=BUDGET_S), url, 10)


@dataclass
class Ledger:
    """Every attempt: its batch, the answer (status or exception name) and how long it took."""

    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    answers: list[tuple[int, str, float]] = field(default_factory=list)

    def statuses(self) -> Counter[str]:
        return Counter(status for _, status, _ in self.answers)

    def not_accepted(self) -> list[int]:
        accepted = {i for i, status, _ in self.answers if status == "202"}
        return [i for i in range(len(self.batches)) if i not in accepted]


async def post(c: httpx.AsyncClient, ledger: Ledger, index: int) -> str:
    started = time.monotonic()
    try:
        r = await c.post("/v1/events", json=ledger.batches[index], headers={SITE_KEY_HEADER: KEY})
        status = str(r.status_code)
        if r.status_code == 503:
            assert r.headers.get("retry-after", "").isdigit(), r.headers
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    ledger.answers.append((index, status, time.monotonic() - started))
    return status


async def poster(c: httpx.AsyncClient, ledger: Ledger, stop: asyncio.Event, n: int) -> None:
    """Post new batches of anonymous events until `stop`, pausing 0.1 s between them."""
    while not stop.is_set():
        ledger.batches.append([event(user_id=None, anonymous_id=f"a{n}-{i}") for i in range(BATCH)])
        await post(c, ledger, len(ledger.batches) - 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def first_202(ledger: Ledger, after: int) -> None:
    while not any(s == "202" for _, s, _ in ledger.answers[after:]):
        await asyncio.sleep(0.05)


async def metric(c: httpx.AsyncClient, prefix: str) -> dict[str, float]:
    text = (await c.get("/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


async def test_a_30s_outage_gets_only_202_and_503_and_resending_stores_each_event_once(
    server: Server,
) -> None:
    await ready(server.url)
    ledger = Ledger()
    async with (
        serving(make_app(server.url)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as c,
    ):
        stop = asyncio.Event()
        posters = [asyncio.create_task(poster(c, ledger, stop, n)) for n in range(POSTERS)]
        await first_202(ledger, 0)
        server.kill()
        outage_began = len(ledger.answers)
        await asyncio.sleep(OUTAGE_S)  # the outage itself: clients keep posting meanwhile
        server.start()
        back = len(ledger.answers)
        await asyncio.wait_for(first_202(ledger, back), 20)
        stop.set()
        await asyncio.gather(*posters)
        during = Counter(s for _, s, _ in ledger.answers[outage_began:back])
        assert during["503"] > 0, during  # the outage was seen
        assert set(ledger.statuses()) <= {"202", "503"}, ledger.statuses()
        slowest = max(t for _, _, t in ledger.answers)
        assert slowest <= BUDGET_S + SLACK_S, f"an answer took {slowest:.1f}s"
        refused = ledger.statuses()["503"]
        errors = await metric(c, "nerve_http_errors_total")
        assert sum(v for k, v in errors.items() if 'status="503"' in k) == refused, errors
        assert not any('status="500"' in k for k in errors), errors

        for index in ledger.not_accepted():  # the client's part: same ids, after Retry-After
            for _ in range(10):
                if await post(c, ledger, index) == "202":
                    break
                await asyncio.sleep(1)
        assert not ledger.not_accepted()

    nc = await nats.connect(server.url)
    try:
        stored = Counter(
            orjson.loads(data)["id"] for _, _, data in await read_all(nc.jetstream(), "ACTIVITY")
        )
    finally:
        await nc.close()
    sent = [e["id"] for batch in ledger.batches for e in batch]
    assert len(sent) == len(set(sent))
    assert stored.most_common(1)[0][1] == 1  # no event twice
    assert set(stored) == set(sent)  # every event once


async def test_a_publish_while_disconnected_fails_fast_with_broker_down(
    tmp_path: Path,
) -> None:
    """Nothing is buffered for later while the client is disconnected: the publish waits for
    the connection within its budget, then raises `BrokerDown` (old: it buffered, waited 4 x
    ack_timeout, and raised nats-py's OutboundBufferLimitError once the buffer was full)."""
    srv = Server(tmp_path)
    srv.start()
    try:
        await ready(srv.url)
        nc = await connect(srv.url, "outage-test", timeout=10)
        bus = Bus(nc, ack_timeout=0.5)
        srv.kill()
        while nc.is_connected:
            await asyncio.sleep(0.02)
        big = [
            Outgoing.event(parse_event(event(user_id=None, anonymous_id="a"))) for _ in range(10)
        ]
        started = time.monotonic()
        with pytest.raises(BrokerDown, match="not connected"):
            await bus.publish(big)
        assert time.monotonic() - started < 0.5 + SLACK_S
        assert nc.pending_data_size == 0  # nothing left to flush into the stream later
        await nc.close()
    finally:
        srv.kill()


async def test_unexpected_errors_are_500_and_broker_errors_503_and_both_are_counted(
    server: Server,
) -> None:
    await ready(server.url)
    app = make_app(server.url)

    @app.get("/boom")
    async def boom() -> Response:
        raise ValueError("a bug")

    @app.get("/down")
    async def down(request: Request) -> Response:
        raise BrokerDown("activity.x.y", "not connected to the broker")

    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        r = await c.get("/down")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "retry with the same ids" in r.json()["detail"]
        r = await c.get("/boom")
        assert r.status_code == 500 and r.json() == {"detail": "internal error"}
        errors = await metric(c, "nerve_http_errors_total")
    assert errors == {
        'nerve_http_errors_total{cause="broker_unavailable",status="503"}': 1.0,
        'nerve_http_errors_total{cause="internal",status="500"}': 1.0,
    }


async def test_a_publish_nobody_acknowledges_fails_within_its_budget_not_per_attempt(
    server: Server,
) -> None:
    """The budget covers every re-send (old: `ack_timeout` per attempt, 4 x in all)."""
    await ready(server.url)
    nc = await connect(server.url, "outage-test", timeout=10)
    try:
        seen: list[str] = []

        async def silent(msg: Any) -> None:  # a responder that never acknowledges
            seen.append(msg.headers["Nats-Msg-Id"])

        await nc.subscribe("silent.x", cb=silent)
        bus = Bus(nc, ack_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(PublishError, match="not acknowledged within 1s"):
            await bus.publish([Outgoing("silent.x", b"{}", "the-id")])
        assert time.monotonic() - started < 1.0 + SLACK_S
        assert seen == ["the-id"] * 4  # re-sent with the same id, so a late store dedupes
    finally:
        await nc.close()
