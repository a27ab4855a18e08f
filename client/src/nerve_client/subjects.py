"""Every stream name, subject and filter of Nerve, and the token-safe encoding of user ids.

Streams and what they capture (provisioned by `engine.bus.provision`):

| stream          | subjects                     |
|-----------------|------------------------------|
| ACTIVITY        | `activity.<user>.<type>`     |
| CRM             | `crm.<user>.<type>`          |
| CATALOG         | `catalog.item.<item>`        |
| RECOMMENDATIONS | `reco.<user>.<slot>`         |
| SIGNALS         | `signals.<topic>.<user>`     |
| ANOMALIES       | `anomalies.<detector>.<user>` (`<user>` is `SITE_TOKEN` for site-wide ones) |
| DEADLETTER      | `dlq.<source>`               |

ACTIVITY and CRM may be partitioned (`nerve init --partitions P`): a stream subject transform
makes the server store `activity.<user>.<type>` as `activity.<user>.<type>.<p>`, where `p` is
FNV-1a of the user token modulo P (`partition_transform`). Publishers never name `p`. The
partition is the last token so that every per-user filter (`activity.<user>.>`) matches both
the stored forms, the partitioned one and the 3-token one of older, unpartitioned streams;
`split_user_subject` and `logical_subject` read both.

Core (not stored) subjects: `reco.request` (the recommender answers), `nerve.control.forget`
(a user was erased: drop caches).

A NATS subject token may not contain `.`, `*`, `>` or whitespace, and Nerve also keeps it to a
portable alphabet. `user_token` maps any user id to such a token, reversibly:

* the characters `A-Z a-z 0-9 _ -` pass through unchanged;
* every other character becomes `~` followed by the upper-case hex of its UTF-8 bytes
  (`alice@bank.com` → `alice~40bank~2Ecom`);
* an anonymous visitor's id is prefixed with `~~` (`~` never precedes another `~` in an
  encoded user id, so an anonymous id and a user id can never share a token).

`decode_token` inverts it. Ids are limited to 128 characters (see `events.envelope`), so a token
is at most 2 + 3 × 4 × 128 bytes, far below the server's subject limit.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
ACTIVITY = "ACTIVITY"
CRM = "CRM"
CATALOG = "CATALOG"
RECOMMENDATIONS = "RECOMMENDATIONS"
SIGNALS = "SIGNALS"
ANOMALIES = "ANOMALIES"
DEADLETTER = "DEADLETTER"
GAVE_UP = "GAVEUP"
"""The server's advisories of messages a consumer stopped redelivering (`max_deliver`)."""
SHORT = {ACTIVITY: "activity", CRM: "crm"}
"""The user streams by the short name a profile's positions use."""

REQUEST_SUBJECT = "reco.request"
TOMBSTONE_SALT_SUBJECT = "$KV.tombstones.salt"
"""The `salt` key of the `tombstones` bucket, written once by provisioning (admin)."""
PROFILE_REQUEST_SUBJECT = "nerve.profiles.get"
"""Core request/reply: the profiles service answers with a user's decrypted profile, so the
internet-facing gateway needs no profile key (`GET /v1/profiles/{user}`)."""
OPS_REQUEST_SUBJECT = "nerve.ops.state"
"""Core request/reply: the ops service answers with the operator console's state (`OpsState`,
`engine.ops`), so the internet-facing gateway reads no stream info, dead letters or registry."""
OPS_STATS_SUBJECT = "nerve.ops.stats"
"""Core request/reply: the ops service answers `/v1/stats` (click-through from ACTIVITY), so
the internet-facing gateway reads no event of the log."""
OPS_EXPERIMENTS_SUBJECT = "nerve.ops.experiments"
"""Core request/reply: the ops service answers `/v1/experiments` (the registry, the served and
shadow lists, ACTIVITY), so the internet-facing gateway reads none of them."""
FORGET_SUBJECT = "nerve.control.forget"
ANON_PREFIX = "~~"
SYSTEM_TOKEN = "~system"
"""The token of events about the system rather than a user (`user_forgotten`). `user_token`
never produces it: `~` there is always followed by two hex digits or by another `~`."""
PUBLISHED_SUBJECT = f"activity.{SYSTEM_TOKEN}.model_published"
SITE_TOKEN = "~site"
"""The token of site-wide anomalies (`anomalies.<detector>.~site`). Never a user token: `_escape`
passes `_` through (`_site` is a valid user id), but `~` in an encoded id is always followed by
two upper-case hex digits or by another `~`, and `s` is neither."""


def _escape(value: str) -> str:
    if _SAFE.fullmatch(value):
        return value
    return _UNSAFE.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode()), value)


def _unescape(token: str) -> str:
    if "~" not in token:
        return token
    raw = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(token):
        raw += token[pos : m.start()].encode()
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += token[pos:].encode()
    return raw.decode()


def user_token(user_id: str | None = None, anonymous_id: str | None = None) -> str:
    """The subject token of a user: the user id when known, else the anonymous id."""
    if user_id:
        return _escape(user_id)
    if anonymous_id:
        return ANON_PREFIX + _escape(anonymous_id)
    raise ValueError("an event needs user_id or anonymous_id")


def decode_token(token: str) -> tuple[str | None, str | None]:
    """Invert `user_token`: returns (user_id, anonymous_id), exactly one of them set."""
    if token.startswith(ANON_PREFIX):
        return None, _unescape(token[len(ANON_PREFIX) :])
    return _unescape(token), None


def item_token(item_id: str) -> str:
    """An item id made token-safe the same way (for `catalog.item.<item>`)."""
    return _escape(item_id)


def is_user_token(token: str) -> bool:
    """False for `SYSTEM_TOKEN`, `SITE_TOKEN` (and anything else `user_token` cannot produce)."""
    return token not in (SYSTEM_TOKEN, SITE_TOKEN)


def activity_subject(token: str, event_type: str) -> str:
    """`activity.<user>.<type>`: where an activity event is stored."""
    return f"activity.{token}.{event_type}"


def crm_subject(token: str, event_type: str) -> str:
    """`crm.<user>.<type>`: where an event published by a CRM service is stored."""
    return f"crm.{token}.{event_type}"


def crm_type_filter(event_type: str) -> str:
    """Every user's CRM events of one type (what the gateway may publish for a CRM)."""
    return f"crm.*.{event_type}"


def deadletter_subject(source: str) -> str:
    """`dlq.<source>`: where inputs rejected by `source` are kept with their reason."""
    return f"dlq.{_escape(source)}"


def max_deliveries_subject(stream: str = "*", consumer: str = "*") -> str:
    """The advisory the server publishes when `consumer` of `stream` gives up on a message."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


def reco_subject(token: str, slot: str) -> str:
    """`reco.<user>.<slot>`: where a user's lists for a slot are kept."""
    return f"reco.{token}.{slot}"


def reco_filter(token: str) -> str:
    """Every slot's lists of one user (the live stream of a browser)."""
    return f"reco.{token}.*"


def signal_subject(topic: str, token: str) -> str:
    """`signals.<topic>.<user>`: where a user's interest signals on a topic are kept."""
    return f"signals.{topic}.{token}"


def anomaly_subject(detector: str, token: str) -> str:
    """`anomalies.<detector>.<user>`: where a detector's anomalies about one user (or, with
    `SITE_TOKEN`, about the whole site) are kept."""
    return f"anomalies.{detector}.{token}"


def anomaly_filter(detector: str | None = None) -> str:
    """The ANOMALIES subjects of `detector` (every detector when None)."""
    return f"anomalies.{detector}.*" if detector else "anomalies.>"


def catalog_subject(item_id: str) -> str:
    """`catalog.item.<item>`: the latest upsert of an item."""
    return f"catalog.item.{item_token(item_id)}"


def user_filters(token: str) -> dict[str, str]:
    """Per stream, the filter that selects every message about one user (erasure)."""
    return {
        ACTIVITY: f"activity.{token}.>",
        CRM: f"crm.{token}.>",
        RECOMMENDATIONS: f"reco.{token}.*",
        SIGNALS: f"signals.*.{token}",
        ANOMALIES: f"anomalies.*.{token}",
        SHADOW: f"shadow.{token}.*",
    }


def type_filter(event_type: str) -> str:
    """Every user's ACTIVITY events of one type."""
    return f"activity.*.{event_type}"


def signal_filter(topic: str | None = None) -> str:
    """The SIGNALS subjects of `topic` (every topic when None)."""
    return f"signals.{topic}.*" if topic else "signals.>"


def partition_transform(stream: str, partitions: int) -> tuple[str, str]:
    """(source, destination) of the subject transform that partitions a user stream (ACTIVITY
    or CRM) into `partitions` by user token: `activity.*.*` is stored as
    `activity.<user>.<type>.<p>`."""
    prefix = SHORT[stream]
    return (
        f"{prefix}.*.*",
        f"{prefix}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},1)}}}}",
    )


_PARTITION_DEST = re.compile(r"\{\{\s*partition\((\d+),\s*1\)\s*\}\}$")


def transform_partitions(destination: str | None) -> int:
    """The partition count of a stream transform's destination (0: not partitioned)."""
    m = _PARTITION_DEST.search(destination or "")
    return int(m.group(1)) if m else 0


def partition_filter(stream: str, partition: int) -> str:
    """Every stored event of one partition of a partitioned user stream."""
    return f"{SHORT[stream]}.*.*.{partition}"


class SubjectError(ValueError):
    """A subject that is not `<prefix>.<user>.<type>` (or `<prefix>.<user>.<type>.<p>`)."""


def split_user_subject(subject: str) -> tuple[str, str]:
    """(user token, event type) of `activity.<user>.<type>` or `crm.<user>.<type>`, stored
    with or without a partition token (`activity.<user>.<type>.<p>`)."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[3].isdigit():
        return parts[1], parts[2]
    if len(parts) != 3:
        raise SubjectError(f"subject {subject!r} is not <stream>.<user>.<type>[.<partition>]")
    return parts[1], parts[2]


def logical_subject(subject: str) -> str:
    """A stored user-stream subject without its partition token (what the event itself names)."""
    head, _, last = subject.rpartition(".")
    return head if last.isdigit() and subject.count(".") == 3 else subject


def stored_filter(subject: str, partitioned: bool) -> str:
    """The filter that selects, in a stream stored partitioned or not, what `subject` (a
    filter written for `<prefix>.<user>.<type>`) means: `activity.*.item_viewed` is
    `activity.*.item_viewed.*` in a partitioned stream. Filters ending in `>` match both."""
    parts = subject.split(".")
    if partitioned and len(parts) == 3 and parts[0] in SHORT.values() and parts[2] != ">":
        return f"{subject}.*"
    return subject


def stored_partition(subject: str) -> int | None:
    """The partition token of a stored user-stream subject (None: stored unpartitioned)."""
    parts = subject.split(".")
    return int(parts[3]) if len(parts) == 4 and parts[3].isdigit() else None


def last_token(subject: str) -> str:
    """The last token of a subject (the slot of `reco.<user>.<slot>`)."""
    return subject.rsplit(".", 1)[-1]


# -- experiments (`engine.experiments`) ------------------------------------------------------
SHADOW = "SHADOW"
"""The stream of shadow lists: what an experiment's challenger would have shown, never served
(`shadow.<user>.<slot>`, `recommendations_updated` with `variant = "shadow"`)."""


def shadow_subject(token: str, slot: str) -> str:
    """`shadow.<user>.<slot>`: where a shadow experiment's lists for a user are kept."""
    return f"shadow.{token}.{slot}"


def shadow_filter(token: str = "*") -> str:
    """Every slot's shadow lists of one user (every user's by default; erasure, reports)."""
    return f"shadow.{token}.*"
