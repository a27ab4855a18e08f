"""Webhook subscriptions: who receives which feed and topic, at which URL, signed with what.

All subscriptions are one JSON document under the key `subscriptions` of the KV bucket
`webhooks`, written with compare-and-set on its revision: two `nerve webhooks add` at once
cannot lose one another's subscription, a removal leaves no key behind, and the service reads
everything in one get. The bucket keeps one revision, so a removed subscription's secret is
not kept in a history (the broker's files may hold the bytes until compaction, like any
replaced message; NATS-NOTES).

The signing secret is stored as given: the delivery service needs it to sign. Only `admin`
and the `webhooks` credential may read the bucket (`engine.credentials`); `nerve webhooks
list` shows a masked form.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.bus import Bus, JetStreamKV
from engine.webhooks.feeds import DEFAULT_FEED, FEEDS
from nerve_client.errors import ConfigError

BUCKET = "webhooks"
KEY = "subscriptions"
SECRET_PREFIX = "whsec_"
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; else `ValueError` saying why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"only http and https URLs are delivered to, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL would be stored and logged; sign instead")
    return url


def check_topic(topic: str, topics: Collection[str], where: Path, section: str = "signals") -> str:
    """`topic` if the service of the feed detects it (`topics`: the `[<section>.<topic>]` of
    the slots file `where`: signal topics, or anomaly detector names); else `ConfigError`
    naming those it does detect. A subscription to any other topic would never receive
    anything."""
    if topic in topics:
        return topic
    known = ", ".join(sorted(topics)) or "none"
    raise ConfigError(
        f"--topic: no [{section}.{topic}] in {where} (there: {known}); add it to the slots "
        f"file the {section} service reads and pass that file with --config"
    )


def shown_url(url: str) -> str:
    """`url` without its query string (it may carry a token), for logs and dead letters."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class Subscription(BaseModel):
    """One receiver: deliveries of `feed` (only `topic` when set) to `url`, signed with
    `secret`, from stream sequence `start_seq` on (what was stored before it was added is
    not sent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^wh_[0-9a-f]{16}$")
    url: str = Field(max_length=2000)
    topic: str | None = None
    feed: str = DEFAULT_FEED
    secret: str = Field(min_length=16, max_length=256, repr=False)
    start_seq: int = Field(default=1, ge=1)
    created_at: AwareDatetime

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC.match(value):
            raise ValueError("a topic is 1-64 of A-Z a-z 0-9 _ -")
        return value

    @field_validator("feed")
    @classmethod
    def _feed(cls, value: str) -> str:
        if value not in FEEDS:
            raise ValueError(f"unknown feed {value!r}; one of {', '.join(FEEDS)}")
        return value

    @property
    def durable(self) -> str:
        """The name of its durable consumer (its delivery state lives in the broker)."""
        return f"webhooks-{self.id}"

    def masked(self) -> dict[str, object]:
        """The subscription as `nerve webhooks list` shows it: the secret masked."""
        shown = self.model_dump(mode="json")
        shown["secret"] = self.secret[: len(SECRET_PREFIX)] + "…" + self.secret[-4:]
        shown["topic"] = self.topic or "*"
        return shown


class Document(BaseModel):
    """The stored value: every subscription."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1
    subscriptions: list[Subscription] = Field(default_factory=list)


class WebhookStore:
    """The subscriptions document in the `webhooks` bucket, read and changed with CAS."""

    def __init__(self, kv: JetStreamKV) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus, *, create: bool = False) -> WebhookStore:
        """The store (with `create`, its bucket is made if missing: operator commands only;
        `nerve up` provisions it)."""
        return cls(await bus.kv(BUCKET, create=create))

    async def load(self) -> tuple[list[Subscription], int]:
        """Every subscription and the document's revision (0: none written yet)."""
        entry = await self.kv.entry(KEY)
        if entry is None:
            return [], 0
        return Document.model_validate_json(entry[0]).subscriptions, entry[1]

    async def _write(self, subs: list[Subscription], revision: int) -> bool:
        doc = Document(subscriptions=subs).model_dump_json().encode()
        (written,) = await self.kv.write_many([(KEY, doc, revision)])
        return written is not None

    async def add(self, sub: Subscription) -> Subscription:
        for _ in range(20):  # lost the race: another writer changed it, read again
            subs, revision = await self.load()
            if await self._write([*subs, sub], revision):
                return sub
        raise ConfigError("the webhooks document kept changing; try again")

    async def remove(self, sub_id: str) -> Subscription | None:
        """Remove `sub_id`; the removed subscription, or None if there was none."""
        for _ in range(20):
            subs, revision = await self.load()
            found = next((s for s in subs if s.id == sub_id), None)
            if found is None:
                return None
            if await self._write([s for s in subs if s.id != sub_id], revision):
                return found
        raise ConfigError("the webhooks document kept changing; try again")


async def subscribe(
    bus: Bus,
    url: str,
    *,
    topic: str | None = None,
    secret: str | None = None,
    feed: str = DEFAULT_FEED,
) -> Subscription:
    """Add a subscription that receives what `feed` stores from now on (`nerve webhooks add`);
    `ConfigError` naming the field when an argument is refused."""
    if feed not in FEEDS:
        raise ConfigError(f"--feed: unknown feed {feed!r}; one of {', '.join(FEEDS)}")
    _, newest = await bus.last_messages(FEEDS[feed].stream, 1)
    try:
        sub = Subscription(
            id="wh_" + secrets.token_hex(8),
            url=url,
            topic=topic,
            feed=feed,
            secret=secret or new_secret(),
            start_seq=newest[0][0] + 1 if newest else 1,
            created_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        e = exc.errors()[0]
        name = str(e["loc"][0]) if e["loc"] else "value"
        field = "URL" if name == "url" else f"--{name}"
        raise ConfigError(f"{field}: {e['msg'].removeprefix('Value error, ')}") from None
    store = await WebhookStore.open(bus, create=True)
    return await store.add(sub)
