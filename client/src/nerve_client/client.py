"""The client for services that are not Nerve (a CRM, a marketing tool, an operator's tool):
receive interest signals and anomalies, publish CRM events. Needs a NATS URL and, for a secured
broker, the credential file an operator issued with `nerve credentials add my-crm --role crm`
(role crm: publish `crm.>`, consume SIGNALS and ANOMALIES; nothing else); nothing else of the
engine runs in-process.

```python
from nerve_client.client import CrmContact, NerveClient

async with await NerveClient.connect(
    "nats://127.0.0.1:4222", credentials=".nerve/credentials/my-crm.json"
) as nerve:
    async for signal in nerve.interest_signals(topic="loan", durable="my-crm"):
        print(signal.user_id, signal.topic, signal.score, [e.event_id for e in signal.evidence])
        contact = CrmContact(user_id=signal.user_id, offer=signal.offer or "loan-personal",
                             channel="phone", outcome="interested", signal_id=signal.id)
        await nerve.publish(contact)
```

`interest_signals` reads a durable consumer on SIGNALS (`durable` names it; one name per
consuming application, shared by its replicas): a signal is acknowledged when the body of the
`async for` has finished with it and the next one is asked for. A signal whose loop was left
(`break`, an exception) is handed back by `close()` at once; after a crash it comes again
after a minute. A restart resumes with the first signal not yet finished, so handling should be
idempotent by `signal.id`. `anomalies(detector=None, durable=...)` reads the ANOMALIES stream
the same way (`Anomaly`: detector, kind, score, baseline, evidence ids; a credential of role
crm or reader may read it). A message that is not a
valid signal is terminated (never redelivered) and logged. `publish` validates the event with
the same models the engine uses and stores it in the CRM stream with its id as `Nats-Msg-Id`
(a retry is stored once).

For a site's backend: `mint_identity_token(secret, user_id, site_key=...)` makes the signed
identity token a page passes to `Nerve.identify(userId, token)` (`nerve_client.identity`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nerve_client.credentials import Credential, Tls, auth_options
from nerve_client.errors import EventRejected
from nerve_client.events import parse_event, parse_event_json
from nerve_client.events.catalog import AnomalyDetected as AnomalyProperties
from nerve_client.events.catalog import InterestSignal as SignalProperties
from nerve_client.events.producers import check_producer
from nerve_client.identity import mint_identity_token, verify_identity_token
from nerve_client.ids import uuid7
from nerve_client.subjects import ANOMALIES, SIGNALS, anomaly_filter, signal_filter

T = TypeVar("T")
log = logging.getLogger("nerve.client")

__all__ = [
    "Anomaly",
    "CrmContact",
    "InterestSignal",
    "NerveClient",
    "mint_identity_token",
    "verify_identity_token",
]


Evidence = SignalProperties.Evidence
"""One event behind a signal (the engine's own model)."""


class InterestSignal(BaseModel):
    """An interest signal as a CRM sees it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str = Field(description="The signal id (quote it back as signal_id)")
    time: datetime
    user_id: str
    topic: str
    score: float
    rule: str
    offer: str | None = None
    decided_at: datetime
    evidence: list[Evidence]
    consent: dict[str, bool] = Field(default_factory=dict)

    @classmethod
    def from_event(cls, raw: bytes) -> InterestSignal:
        """Validate a stored `interest_signal` with the engine's models, then flatten it."""
        event = parse_event_json(raw)  # raises EventRejected naming each bad field
        if event.type != "interest_signal":
            raise ValueError(f"not an interest_signal: {event.type!r}")
        props = event.properties.model_dump()
        return cls(id=event.id, time=event.time, user_id=event.user_id or "", **props)


class Anomaly(BaseModel):
    """An anomaly as an operator tool sees it (`anomaly_detected`, flattened). `user_id` or
    `anonymous_id` names the user; both are None for a site-wide one (`subject == "site"`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str
    time: datetime
    user_id: str | None = None
    anonymous_id: str | None = None
    detector: str
    kind: str
    subject: Literal["user", "site"]
    score: float
    value: float
    threshold: float
    baseline: list[AnomalyProperties.Baseline]
    evidence: list[AnomalyProperties.Evidence]
    decided_at: datetime
    description: str
    event_type: str | None = None

    @classmethod
    def from_event(cls, raw: bytes) -> Anomaly:
        """Validate a stored `anomaly_detected` with the engine's models, then flatten it."""
        event = parse_event_json(raw)
        if event.type != "anomaly_detected":
            raise ValueError(f"not an anomaly_detected: {event.type!r}")
        props = event.properties.model_dump()
        return cls(
            id=event.id,
            time=event.time,
            user_id=event.user_id,
            anonymous_id=event.anonymous_id,
            **props,
        )


class CrmContact(BaseModel):
    """What a salesperson logged: `crm_contact_logged` about `offer` (an item id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    user_id: str = Field(min_length=1, max_length=128)
    offer: str = Field(min_length=1, max_length=128)
    channel: Literal["phone", "email", "branch", "chat", "video", "letter"]
    outcome: Literal["interested", "declined", "converted", "no_answer", "callback"]
    agent_id: str | None = Field(default=None, max_length=128)
    signal_id: str | None = Field(default=None, max_length=128)
    time: datetime | None = None
    id: str | None = Field(default=None, description="Event id; a new UUIDv7 if not given")

    def to_event(self) -> dict[str, Any]:
        props: dict[str, Any] = {"channel": self.channel, "outcome": self.outcome}
        if self.agent_id:
            props["agent_id"] = self.agent_id
        if self.signal_id:
            props["signal_id"] = self.signal_id
        return {
            "id": self.id or uuid7(),
            "type": "crm_contact_logged",
            "time": (self.time or datetime.now(UTC)).isoformat(),
            "user_id": self.user_id,
            "item_id": self.offer,
            "source": "crm",
            "properties": props,
        }


class NerveClient:
    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._in_hand: dict[int, Any] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str = "nerve-client",
        *,
        credentials: str | Path | Credential | None = None,
        tls: Tls | None = None,
    ) -> NerveClient:
        """Connect to `url` as `credentials`: the file `nerve credentials add` wrote (or a
        NATS `.creds` file), or a loaded `Credential`; none connects as the URL says (an open
        dev server, or `nats://user:password@host`). `tls` adds TLS (CA, client cert)."""
        cred = (
            Credential.load(Path(credentials))
            if isinstance(credentials, str | Path)
            else credentials
        )
        nc = await nats.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,
            connect_timeout=5,
            error_cb=_log_error,
            **auth_options(cred, tls),
        )
        return cls(nc)

    async def __aenter__(self) -> NerveClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Hand back the signals being handled (a loop left with `break`), then disconnect."""
        for msg in list(self._in_hand.values()):
            with contextlib.suppress(Exception):
                await msg.nak()
        self._in_hand.clear()
        await self.nc.drain()

    def interest_signals(
        self, topic: str | None = None, *, durable: str, new_only: bool = False
    ) -> AsyncGenerator[InterestSignal, None]:
        """Signals (of `topic`, or all), from where `durable` stopped; see the module doc."""
        subject = signal_filter(topic)
        return self._typed(SIGNALS, subject, durable, new_only, InterestSignal.from_event)

    def anomalies(
        self, detector: str | None = None, *, durable: str, new_only: bool = False
    ) -> AsyncGenerator[Anomaly, None]:
        """Anomalies (of `detector`, or all) from the ANOMALIES stream, from where `durable`
        stopped; acknowledged, handed back and resumed exactly like `interest_signals`."""
        subject = anomaly_filter(detector)
        return self._typed(ANOMALIES, subject, durable, new_only, Anomaly.from_event)

    async def _typed(
        self,
        stream: str,
        subject: str,
        durable: str,
        new_only: bool,
        parse: Callable[[bytes], T],
    ) -> AsyncGenerator[T, None]:
        """`_consume`'s messages as `parse` makes them: one that does not parse is dropped
        (`_drop`), one is acknowledged once the caller asks for the next."""
        messages = self._consume(stream, subject, durable, new_only)
        async with contextlib.aclosing(messages):  # unsubscribes when the caller's loop ends
            async for raw in messages:
                try:
                    item = parse(raw.data)
                except (ValueError, KeyError, TypeError, ValidationError, EventRejected) as exc:
                    await self._drop(raw, stream.lower(), exc)
                    continue
                yield item
                await self._done(raw)

    async def _consume(
        self, stream: str, subject: str, durable: str, new_only: bool
    ) -> AsyncGenerator[Any, None]:
        """The messages of a durable consumer on `stream`, one at a time, each held in hand
        (handed back by `close()`) until `_done` or `_drop`."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.ALL,
            filter_subject=subject,
            ack_wait=60,
            max_deliver=10,
        )
        await self.js.add_consumer(stream, config)
        sub = await self.js.pull_subscribe_bind(durable, stream)
        try:
            while True:
                try:
                    # One at a time: nats-py's fetch(n) holds a lone message until n arrive or
                    # the timeout passes, and these are rare enough not to need batches.
                    msgs = await sub.fetch(1, timeout=5.0)
                except TimeoutError:
                    continue
                for msg in msgs:  # fetched, not yet finished: handed back by close()
                    self._in_hand[id(msg)] = msg
                for msg in msgs:
                    yield msg
        finally:
            with contextlib.suppress(Exception):  # the connection may be closing already
                await sub.unsubscribe()

    async def _done(self, msg: Any) -> None:
        self._in_hand.pop(id(msg), None)
        await msg.ack()

    async def _drop(self, msg: Any, what: str, exc: Exception) -> None:
        log.error("dropping a malformed %s on %s: %s", what, msg.subject, exc)
        self._in_hand.pop(id(msg), None)
        await msg.term()

    async def publish(self, event: CrmContact | dict[str, Any]) -> str:
        """Validate and store a CRM event (crm_contact_logged); returns its id."""
        data = event.to_event() if isinstance(event, CrmContact) else dict(event)
        parsed = check_producer("crm", parse_event(data))  # EventRejected names each bad field
        await self.js.publish(
            parsed.subject, parsed.to_json(), headers={"Nats-Msg-Id": parsed.id}, timeout=5
        )
        return parsed.id


async def _log_error(exc: Exception) -> None:
    log.warning("NATS: %s", exc)
