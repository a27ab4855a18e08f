"""What a hostile visitor's inputs get: a 4xx and, for refused events, a dead letter that fits
in one broker message; odd bytes in asset paths get 404. Real nats-server, real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS

from engine.bus.reader import read_all
from engine.gateway import SITE_KEY_HEADER, create_app
from engine.settings import GatewaySettings, SiteKey
from nerve_client.errors import FieldError
from nerve_client.events import DeadLetter
from nerve_client.events.deadletter import RAW_CAP
from tests.conftest import count, event, serving

KEY = "abuse-site-key"
HEADERS = {SITE_KEY_HEADER: KEY, "content-type": "application/json"}
MIB = 1 << 20
MAX_PAYLOAD = MIB
"""The broker's default `max_payload`, which every stored message must fit."""


@pytest.fixture
async def base(fresh: NATS, nats_url: str) -> AsyncIterator[str]:
    settings = GatewaySettings(site_keys=(SiteKey(key=KEY),), max_body_bytes=MIB)
    async with serving(create_app(settings, nats_url, 5)) as url:
        yield url


def padded(item: dict[str, Any], field: list[str], size: int) -> bytes:
    """`item` as JSON of exactly `size` bytes, the string at path `field` padded with "x"."""
    target = item
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = ""
    short = len(orjson.dumps(item))
    target[field[-1]] = "x" * (size - short)
    body = orjson.dumps(item)
    assert len(body) == size
    return body


async def the_deadletter(nc: NATS) -> tuple[DeadLetter, int]:
    ((_, _, data),) = await read_all(nc.jetstream(), "DEADLETTER")
    return DeadLetter.model_validate_json(data), len(data)


def not_json(size: int) -> bytes:
    return b"{" + b"\xff" * (size - 1)


def bad_title(size: int) -> bytes:
    """Valid JSON, an invalid event (its title is far over 300 characters)."""
    item = event(user_id=None, anonymous_id="a-1", properties={"title": ""})
    return padded(item, ["properties", "title"], size)


def big_annotation(size: int) -> bytes:
    """A valid page_viewed in all but its size (free annotations are allowed)."""
    item = event(user_id=None, anonymous_id="a-1", properties={"page_type": "home", "note": ""})
    return padded(item, ["properties", "note"], size)


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (not_json, 400, "not valid JSON"),
        (bad_title, 422, "at most 300 characters"),
        (big_annotation, 422, "exceeds"),
    ],
)
async def test_a_refused_1_mib_body_is_a_4xx_with_one_deadletter_that_fits_the_broker(
    base: str, fresh: NATS, make: Any, status: int, reason: str
) -> None:
    body = make(MIB)
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        r = await c.post("/v1/events", content=body, headers=HEADERS)
    assert r.status_code == status, r.text[:300]
    assert await count(fresh, "ACTIVITY") == 0
    record, size = await the_deadletter(fresh)
    assert reason in record.reason
    assert size < MAX_PAYLOAD // 4  # far inside the broker's limit
    assert record.raw_length == MIB and record.truncated
    assert record.raw_sha256 == hashlib.sha256(body).hexdigest()
    assert record.raw == body[:RAW_CAP]


async def test_a_small_refused_body_is_kept_whole(base: str, fresh: NATS) -> None:
    body = b"not json at all"
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        assert (await c.post("/v1/events", content=body, headers=HEADERS)).status_code == 400
    record, _ = await the_deadletter(fresh)
    assert record.raw == body and not record.truncated and record.raw_length == len(body)
    assert record.raw_sha256 == hashlib.sha256(body).hexdigest()


def test_deadletter_texts_that_echo_the_input_are_clipped() -> None:
    errors = [FieldError("type", "unknown event type '" + "y" * 100_000 + "'")] * 300
    record = DeadLetter.build("gateway", b"x", errors, datetime.now(UTC), event_id="e" * 10_000)
    assert len(record.to_json()) < 300_000
    assert len(record.errors) == 100 and record.reason.endswith("and 200 more")
    assert len(record.reason) < 5000
    assert record.event_id is not None and len(record.event_id) < 1100


async def raw_get(base: str, target: str) -> int:
    """The status of `GET target`, sent byte for byte (an HTTP client would normalise `..`)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "target",
    [
        "/demo/index.html%00.txt",
        "/demo/%00",
        "/demo/%ff",
        "/demo/index.html%ff",
        "/demo/../pyproject.toml",
        "/demo/../../etc/passwd",
        "/demo/%2e%2e/%2e%2e/pyproject.toml",
        "/demo/..%2f..%2fpyproject.toml",
        "/demo/..%5c..%5cpyproject.toml",
        "/demo/loans/%e2%80%ae",
        "/demo/loans/%0d%0aSet-Cookie:x=1",
        "/demo/" + "a" * 5000,
    ],
)
async def test_odd_bytes_in_asset_paths_are_404_never_500(base: str, target: str) -> None:
    assert await raw_get(base, target) == 404


async def test_the_demo_files_and_item_pages_are_still_served(base: str) -> None:
    for target in ("/demo/", "/demo/index.html", "/demo/site.css", "/demo/loans/acc-current"):
        assert await raw_get(base, target) == 200, target
