"""The ledger of `bench/faults.py`: every attempt and every acknowledgement of a load generator
that posts events to the gateway, and the answers it got.

The load is anonymous browsing only (`page_viewed`, `item_viewed` with an `anonymous_id`), the
kind of event a public site key may send without an identity token. Two lanes share one HTTP
client: the *new* lane posts fresh events at a steady rate (`rate` events/s in requests of
`batch`), and the *retry* lane re-sends, with the same ids, every event that got no 202 (a 503,
another status, a timeout, a refused or reset connection), after the answer's `Retry-After` (or
0.5 s), in requests of up to `RETRY_BATCH`, one request at a time, so a backlog after an outage
drains at a bounded rate. An event is acknowledged when its id is in the `ids` of a 202.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from nerve_client.ids import uuid7
from nerve_client.subjects import user_token

RETRY_BATCH = 100
MAX_IN_FLIGHT = 32
TIMEOUT_S = 10.0
"""A request with no answer after this long counts as a timeout (the outage contract asks for
an answer within a few seconds)."""


@dataclass(slots=True)
class Entry:
    """One event the client made: its body, how often it was sent, when it was first acked."""

    body: dict[str, Any]
    token: str
    first_at: float
    attempts: int = 0
    acked_at: float | None = None


@dataclass(slots=True)
class Answer:
    """One HTTP exchange: when it was sent (monotonic), how long it took, what came back."""

    sent: float
    latency: float
    outcome: str  # "202", "503", ..., "timeout", "refused", "reset"
    events: int
    lane: str


@dataclass
class Ledger:
    """Attempts and acknowledgements by event id, and every answer in order."""

    entries: dict[str, Entry] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    def new(self, body: dict[str, Any]) -> Entry:
        token = user_token(body.get("user_id"), body.get("anonymous_id"))
        entry = Entry(body, token, time.monotonic())
        self.entries[body["id"]] = entry
        return entry

    def acked(self) -> set[str]:
        return {i for i, e in self.entries.items() if e.acked_at is not None}

    def unacked(self) -> list[str]:
        return [i for i, e in self.entries.items() if e.acked_at is None]

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Answers by outcome among requests sent in [since, until)."""
        return Counter(a.outcome for a in self.answers if since <= a.sent < until)

    def first_202_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first 202 answered after it (None if none)."""
        done = [a.sent + a.latency for a in self.answers if a.outcome == "202"]
        later = [t for t in done if t >= moment]
        return min(later) - moment if later else None


def make_event(n: int, users: int, prefix: str) -> dict[str, Any]:
    """The n-th event of a load: an anonymous visitor `<prefix>-<k>` viewing a page or an item
    (each scenario has its own prefix, so its users are its own)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body: dict[str, Any] = {"id": uuid7(), "time": stamp, "anonymous_id": f"{prefix}-{n % users}"}
    if n % 3 == 0:
        body |= {"type": "page_viewed", "properties": {"page_type": "home"}}
    else:
        body |= {
            "type": "item_viewed",
            "item_id": f"item-{n % 97}",
            "properties": {"category": f"cat-{n % 7}"},
        }
    return body


def _outcome(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused"
    return "reset"  # ReadError, RemoteProtocolError, WriteError: the connection broke


class Load:
    """The load generator: `run` posts until `stop`; `drain` re-sends until all are acked."""

    def __init__(self, base: str, site_key: str, ledger: Ledger, rate: float, *, prefix: str,
                 batch: int = 4, users: int = 500) -> None:  # fmt: skip
        self.base, self.ledger, self.prefix = base, ledger, prefix
        self.rate, self.batch, self.users = rate, batch, users
        self.headers = {"X-Nerve-Site-Key": site_key, "Content-Type": "application/json"}
        self.retry: deque[tuple[float, str]] = deque()  # (due, event id)
        self.made = 0
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def post(self, client: httpx.AsyncClient, ids: list[str], lane: str) -> None:
        """Send these events once; ack what a 202 names, queue the rest for a retry."""
        entries = [self.ledger.entries[i] for i in ids]
        for e in entries:
            e.attempts += 1
        sent = time.monotonic()
        delay = 0.5
        try:
            r = await client.post("/v1/events", json=[e.body for e in entries])
            outcome = str(r.status_code)
            named = set(r.json().get("ids", ())) if r.status_code == 202 else set()
            if "retry-after" in r.headers:
                delay = min(float(r.headers["retry-after"]), 5.0)
        except (httpx.TransportError, ValueError) as exc:
            outcome, named = (
                _outcome(exc) if isinstance(exc, httpx.TransportError) else "bad",
                set(),
            )
        now = time.monotonic()
        self.ledger.answers.append(Answer(sent, now - sent, outcome, len(ids), lane))
        for i, e in zip(ids, entries, strict=True):
            if i in named:
                e.acked_at = e.acked_at or now
            elif e.acked_at is None:
                self.retry.append((now + delay, i))

    async def _one(self, client: httpx.AsyncClient, ids: list[str]) -> None:
        try:
            await self.post(client, ids, "new")
        finally:
            self._slots.release()

    async def _new_lane(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        interval = self.batch / self.rate
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        k = 0
        while not stop.is_set():
            due = started + k * interval
            k += 1
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._slots.acquire()  # at most MAX_IN_FLIGHT requests wait on a slow gateway
            ids = []
            for _ in range(self.batch):
                ids.append(
                    self.ledger.new(make_event(self.made, self.users, self.prefix)).body["id"]
                )
                self.made += 1
            task = asyncio.create_task(self._one(client, ids))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def _retry_once(self, client: httpx.AsyncClient) -> bool:
        """Re-send the due retries (one request); False if none was due."""
        now = time.monotonic()
        ids: list[str] = []
        while self.retry and self.retry[0][0] <= now and len(ids) < RETRY_BATCH:
            _, i = self.retry.popleft()
            if self.ledger.entries[i].acked_at is None and i not in ids:
                ids.append(i)
        if ids:
            await self.post(client, ids, "retry")
        return bool(ids)

    async def _retry_lane(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await self._retry_once(client):
                await asyncio.sleep(0.05)

    def client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT + 2)
        return httpx.AsyncClient(base_url=self.base, headers=self.headers, timeout=TIMEOUT_S,
                                 limits=limits)  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Post new events at the rate, and re-send refused ones, until `stop` is set."""
        async with self.client() as client:
            await asyncio.gather(self._new_lane(client, stop), self._retry_lane(client, stop))

    async def drain(self, timeout: float) -> int:
        """Re-send until every event is acked or `timeout` passes; returns how many are not."""
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while self.ledger.unacked() and time.monotonic() < deadline:
                if not await self._retry_once(client):
                    if not self.retry:  # lost track of some (cannot happen): queue them again
                        self.retry.extend((0.0, i) for i in self.ledger.unacked())
                    await asyncio.sleep(0.05)
        return len(self.ledger.unacked())
