"""Shared fixtures: one real nats-server per test module, fresh streams per test when needed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from nats.aio.client import Client as NATS

from engine.broker import EmbeddedBroker
from engine.bus import Bus, connect, provision
from engine.bus.reader import read_all
from engine.settings import BrokerSettings, StreamSettings
from engine.synth import generate
from engine.warehouse import row, table
from nerve_client.events import Envelope, parse_event_json
from nerve_client.ids import uuid7
from nerve_client.subjects import activity_subject, user_token


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real nats-server (JetStream, random loopback port, temporary store) for the module,
    with authentication on as always (`engine.credentials`)."""
    b = EmbeddedBroker(BrokerSettings(data_dir=tmp_path_factory.mktemp("broker")))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def nats_url(broker: EmbeddedBroker) -> str:
    """The broker's URL with the admin user and password in it: tests may do anything."""
    return broker.admin_url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await connect(nats_url, "test", timeout=5)
    yield client
    await client.close()


@pytest.fixture
def bus(nc: NATS) -> Bus:
    """The engine's door to the broker, over the test's connection."""
    return Bus(nc)


def removals_pending(store: Path) -> list[str]:
    """Stream directories nats-server renamed to `.<name>` on delete and is still removing."""
    found: list[str] = []
    for streams in store.glob("jetstream/*/streams"):  # <store>/jetstream/<account>/streams
        with contextlib.suppress(FileNotFoundError):
            found += [e.name for e in os.scandir(streams) if e.name.startswith(".")]
    return found


async def reset_streams(nc: NATS, store: Path, timeout: float = 10.0) -> None:
    """Delete every stream and provision them again, empty.

    nats-server (2.14-2.15, `fileStore.Delete`) renames a deleted stream's directory to
    `.<name>` and removes it in the background; deleting `<name>` again while that is still
    there fails the rename, the error is ignored, and the stream re-created under `<name>`
    recovers the old messages (how `test_big_batches_are_pipelined_through_a_small_window` once
    counted 2051 of 2000). So wait until earlier removals are done, and check the result."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while left := removals_pending(store):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nats-server never finished removing deleted streams: {left}")
        await asyncio.sleep(0.005)
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)
    await provision(js, StreamSettings())
    made = {"KV_tombstones": 1}  # provisioning writes the tombstones' salt
    left_over = {
        i.config.name: i.state.messages
        for i in await js.streams_info()
        if i.state.messages and i.state.messages != made.get(i.config.name)
    }
    assert not left_over, f"streams not empty after re-creation: {left_over}"


@pytest.fixture
async def fresh(nc: NATS, broker: EmbeddedBroker) -> NATS:
    """Every stream deleted and provisioned again: a test that counts messages starts at zero."""
    await reset_streams(nc, broker.data_dir / "jetstream")
    return nc


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` (an ASGI app: the gateway) under uvicorn on a loopback port; yields its URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def count(nc: NATS, stream: str) -> int:
    return (await nc.jetstream().stream_info(stream)).state.messages


async def stored(nc: NATS, stream: str = "ACTIVITY") -> list[Envelope]:
    """Every event of `stream`, parsed, in stream order."""
    return [parse_event_json(d) for _, _, d in await read_all(nc.jetstream(), stream)]


def event(etype: str = "page_viewed", **fields: Any) -> dict[str, Any]:
    """A valid event dict of `etype` (properties filled in), overridden by `fields`."""
    base: dict[str, Any] = {
        "id": uuid7(),
        "type": etype,
        "time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "user_id": "u-1",
        "properties": dict(EXAMPLE_PROPERTIES.get(etype, {})),
    }
    if etype in NEEDS_ITEM:
        base["item_id"] = "loan-personal"
    if etype == "user_identified":
        base["anonymous_id"] = "anon-1"
    if etype in ("user_forgotten", "model_published"):
        del base["user_id"]
    base.update(fields)
    return base


NEEDS_ITEM = {
    "item_viewed",
    "item_added_to_cart",
    "item_purchased",
    "item_rated",
    "recommendation_clicked",
    "offer_dismissed",
}
EXAMPLE_PROPERTIES: dict[str, dict[str, Any]] = {
    "anomaly_detected": {
        "detector": "bursts",
        "kind": "rate_burst",
        "subject": "user",
        "score": 7.5,
        "value": 12,
        "threshold": 6,
        "baseline": [{"of": "user", "method": "median_mad", "window": "last 30", "samples": 30}],
        "evidence": [
            {
                "event_id": "e-1",
                "stream": "ACTIVITY",
                "seq": 3,
                "type": "item_viewed",
                "time": "2026-11-01T00:00:00Z",
            }
        ],
        "decided_at": "2026-11-01T00:00:00Z",
        "description": "12 item_viewed in 60 s",
    },
    "page_viewed": {"page_type": "home", "title": "Welcome"},
    "item_viewed": {"category": "loans"},
    "search_performed": {"query": "mortgage", "results_count": 3},
    "simulator_used": {"simulator": "loan", "amount": 12000, "term_months": 48},
    "item_added_to_cart": {"quantity": 1, "price": 900},
    "item_purchased": {"value": 910.5, "currency": "EUR"},
    "item_rated": {"rating": 4.5},
    "recommendation_shown": {
        "recommendation_id": "r-1",
        "slot": "home",
        "items": [{"item_id": "loan-personal", "position": 0}],
    },
    "recommendation_clicked": {"recommendation_id": "r-1", "slot": "home", "position": 0},
    "offer_dismissed": {"recommendation_id": "r-1", "slot": "home", "position": 1},
    "user_identified": {"method": "login"},
    "consent_updated": {"analytics": True, "personalization": True, "marketing": False},
    "crm_contact_logged": {"channel": "phone", "outcome": "interested"},
    "user_forgotten": {"erasure_id": "e-1", "erased": {"ACTIVITY": 3}},
    "model_published": {"model_version": "ease-1", "slot": "home", "model": "ease"},
    "interest_signal": {
        "topic": "loan",
        "score": 1.5,
        "rule": "simulator_used >= 2",
        "evidence": [
            {
                "event_id": "e-1",
                "stream": "ACTIVITY",
                "seq": 3,
                "type": "simulator_used",
                "time": "2026-11-01T00:00:00Z",
            }
        ],
        "decided_at": "2026-11-01T00:00:00Z",
        "window_days": 7,
    },
    "recommendations_updated": {
        "recommendation_id": "r-2",
        "slot": "home",
        "items": [{"item_id": "loan-personal", "position": 0, "score": 0.5, "reason": "popular"}],
        "activity_seq": 12,
        "crm_seq": 0,
    },
}


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A generated history (3,000 users, 60 days) as a warehouse-shaped DataFrame."""
    path = tmp_path_factory.mktemp("models") / "h.jsonl"
    generate(path, users=3000, days=60, seed=21, end=datetime(2026, 6, 1, tzinfo=UTC))
    rows = []
    for seq, line in enumerate(path.read_bytes().splitlines(), 1):
        e = orjson.loads(line)
        subject = activity_subject(user_token(e.get("user_id"), e.get("anonymous_id")), e["type"])
        rows.append(row(seq, subject, line))
    return table(r for r in rows if r).to_pandas()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path
