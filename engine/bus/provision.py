"""Provisioning: create or update every stream, KV bucket and object store of the design.

`provision` compares what exists with what is wanted and changes only what differs, so running
it twice changes nothing. A difference the server cannot apply in place (storage type,
retention) is refused with a `ProvisionError` naming the field, before anything is changed.

ACTIVITY and CRM are partitioned by user with a subject transform (`partition_transform`):
the count is chosen when they are created (`StreamSettings.partitions`, default
`DEFAULT_PARTITIONS`) and never changed silently afterwards. Unset, an existing stream keeps
what it has (an older, unpartitioned one stays so: readers accept both stored forms); a count
that differs from an existing stream's is refused (`ProvisionError(..., "partitions", ...)`),
since moving users between partitions would split a user's history between two consumers.
Replicas work the same way (`StreamSettings.replicas`): unset, a new stream gets 1 and an
existing one keeps its own, so only `nerve init --replicas N` changes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import APIError, NotFoundError

from engine.bus.pipeline import EXPECTED_LAST_SUBJECT_SEQ
from engine.settings import DEFAULT_PARTITIONS, StreamSettings
from nerve_client.errors import ConfigError, ProvisionError
from nerve_client.subjects import (
    ACTIVITY,
    ANOMALIES,
    CATALOG,
    CRM,
    DEADLETTER,
    GAVE_UP,
    RECOMMENDATIONS,
    SHADOW,
    SIGNALS,
    TOMBSTONE_SALT_SUBJECT,
    max_deliveries_subject,
    partition_transform,
    transform_partitions,
)

if TYPE_CHECKING:
    from engine.bus.bus import Bus

DAY = 86_400.0
IMMUTABLE = ("storage", "retention")
MANAGED = (
    "subjects",
    "storage",
    "retention",
    "max_age",
    "max_bytes",
    "max_msgs_per_subject",
    "duplicate_window",
    "num_replicas",
    "discard",
    "allow_direct",
    "description",
)


@dataclass(frozen=True)
class Bucket:
    """A KV bucket: name, how many revisions per key are kept, and what it is for.

    `erasable` buckets allow deleting single messages, so a key's whole history can be
    securely erased (`nerve forget`); nats-py creates buckets with deletes denied, and the
    server cannot lift that later, so Nerve creates its bucket streams itself.
    """

    name: str
    history: int
    description: str
    erasable: bool = False
    max_age: float = 0.0
    """Seconds a value lives (0: forever)."""


def bucket_stream(b: Bucket, replicas: int) -> StreamConfig:
    """The stream behind a KV bucket, as nats-py would create it, deletes allowed if erasable."""
    return StreamConfig(
        name=f"KV_{b.name}",
        description=b.description,
        subjects=[f"$KV.{b.name}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=not b.erasable,
        discard=DiscardPolicy.NEW,
        duplicate_window=min(120.0, b.max_age) if b.max_age else 120.0,
        max_age=b.max_age,
        max_consumers=-1,
        max_msgs=-1,
        max_msg_size=-1,
        max_msgs_per_subject=b.history,
        num_replicas=replicas,
        storage=StorageType.FILE,
    )


@dataclass
class Report:
    """What `provision` did, resource by resource."""

    created: list[str] = field(default_factory=list)
    updated: dict[str, list[str]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def _transform(stream: str, partitions: int) -> SubjectTransform | None:
    return SubjectTransform(*partition_transform(stream, partitions)) if partitions else None


def partitions_of(config: StreamConfig) -> int:
    """The partition count of a stream's config (0: unpartitioned)."""
    transform = config.subject_transform
    return transform_partitions(transform.dest if transform else None)


def _lists(s: StreamSettings) -> dict[str, Any]:
    """The limits of a stream of users' lists: a bounded history per subject."""
    return {"max_msgs_per_subject": s.reco_per_subject, "max_age": s.reco_max_age_days * DAY}


def streams(s: StreamSettings) -> list[StreamConfig]:
    """The streams of DESIGN.md with the limits of `s` (new ones: unset partitions are
    `DEFAULT_PARTITIONS`)."""
    partitions = DEFAULT_PARTITIONS if s.partitions is None else s.partitions

    def cfg(name: str, subjects: list[str], description: str, **kw: Any) -> StreamConfig:
        base: dict[str, Any] = {
            "storage": StorageType.FILE,
            "retention": RetentionPolicy.LIMITS,
            "discard": DiscardPolicy.OLD,
            "num_replicas": s.replicas or 1,
            "duplicate_window": s.duplicate_window_s,
            "max_age": 0.0,
            "max_bytes": -1,
            "max_msgs_per_subject": -1,
            "allow_direct": True,
        }
        base.update(kw)
        return StreamConfig(name=name, subjects=subjects, description=description, **base)

    return [
        cfg(
            ACTIVITY,
            ["activity.>"],
            "The log: every user action, activity.<user>.<type>",
            max_age=s.activity_max_age_days * DAY,
            max_bytes=s.activity_max_bytes or -1,
            subject_transform=_transform(ACTIVITY, partitions),
        ),
        cfg(
            CATALOG,
            ["catalog.item.*"],
            "Item upserts, latest per item wins",
            max_msgs_per_subject=1,
        ),
        cfg(
            RECOMMENDATIONS,
            ["reco.*.*"],
            "recommendations_updated per reco.<user>.<slot>, bounded history",
            **_lists(s),
        ),
        cfg(
            SHADOW,
            ["shadow.*.*"],
            "Shadow lists of experiments per shadow.<user>.<slot>, never served",
            **_lists(s),
        ),
        cfg(
            SIGNALS,
            ["signals.*.*"],
            "interest_signal per signals.<topic>.<user>",
            max_age=s.signals_max_age_days * DAY,
        ),
        cfg(
            ANOMALIES,
            ["anomalies.>"],
            "anomaly_detected per anomalies.<detector>.<user> (or .~site)",
            max_age=s.signals_max_age_days * DAY,
        ),
        cfg(
            CRM,
            ["crm.>"],
            "Events published by CRM services, crm.<user>.<type>",
            max_age=s.activity_max_age_days * DAY,
            subject_transform=_transform(CRM, partitions),
        ),
        cfg(
            DEADLETTER,
            ["dlq.>"],
            "Rejected inputs with reason and raw bytes, dlq.<source>",
            max_age=s.deadletter_max_age_days * DAY,
        ),
        cfg(
            GAVE_UP,
            [max_deliveries_subject()],
            "Server advisories: a consumer stopped redelivering a message (max_deliver); the "
            "consumer's service dead-letters it, even if it was down when the advisory came",
            max_age=s.deadletter_max_age_days * DAY,
        ),
    ]


BUCKETS = (
    Bucket("profiles", 1, "Profiles, sealed per user, under pseudonymous keys", erasable=True),
    Bucket(
        "userkeys", 1, "Per-user data keys: erasing one shreds that user's profile", erasable=True
    ),
    Bucket("registry", 16, "active.<slot> and model.<version>: which model serves, model cards"),
    Bucket("webhooks", 1, "Webhook subscriptions: URLs, topics, signing secrets"),
    Bucket("imports", 1, "Import checkpoints: file hash -> last line applied"),
    Bucket("tombstones", 1, "Erased users: a keyed hash of each token, never served again"),
    Bucket("health", 1, "Each running service's progress, for /healthz", max_age=60.0),
    Bucket(
        "partitions",
        1,
        "Partition leases of the replicas (<service>.lease.<p>, <service>.member.<holder>); "
        "max age = the lease time",
        erasable=True,  # a release deletes the holder's revision (engine.bus.leases)
        max_age=10.0,  # replaced by StreamSettings.lease_s
    ),
)
OBJECT_STORES = (("models", "Model artifacts: arrays and JSON, no pickle"),)


def _norm(name: str, value: Any) -> Any:
    if name in ("max_age", "duplicate_window"):
        return round(float(value or 0), 3)
    if name == "max_bytes":
        return -1 if value in (None, 0) else value
    if name == "subjects":
        return sorted(value or [])
    if name == "allow_direct":
        return bool(value)
    return value


def diff(have: StreamConfig, want: StreamConfig) -> list[str]:
    """Names of the managed fields whose values differ."""
    return [f for f in MANAGED if _norm(f, getattr(have, f)) != _norm(f, getattr(want, f))]


async def _ensure_stream(js: JetStreamContext, want: StreamConfig, report: Report) -> None:
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want)
        report.created.append(want.name)
        return
    changed = diff(info.config, want)
    if not changed:
        report.unchanged.append(want.name)
        return
    for f in changed:
        if f in IMMUTABLE:
            raise ProvisionError(want.name, f, getattr(info.config, f), getattr(want, f))
    merged = dataclasses.replace(info.config, **{f: getattr(want, f) for f in changed})
    await js.update_stream(merged)
    report.updated[want.name] = changed


async def _ensure_bucket(
    js: JetStreamContext, b: Bucket, replicas: int | None, report: Report
) -> None:
    stream = f"KV_{b.name}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(bucket_stream(b, replicas or 1))
        report.created.append(f"kv:{b.name}")
        return
    if b.erasable and info.config.deny_delete:
        raise ProvisionError(stream, "deny_delete", True, False)
    want: dict[str, Any] = {"max_msgs_per_subject": b.history, "allow_direct": True}
    if replicas is not None:
        want["num_replicas"] = replicas
    if b.max_age:
        want["max_age"] = _norm("max_age", b.max_age)
    changed = [k for k, v in want.items() if _norm(k, getattr(info.config, k)) != v]
    if not changed:
        report.unchanged.append(f"kv:{b.name}")
        return
    await js.update_stream(dataclasses.replace(info.config, **{k: want[k] for k in changed}))
    report.updated[f"kv:{b.name}"] = changed


async def _ensure_object_store(
    js: JetStreamContext, name: str, description: str, replicas: int | None, report: Report
) -> None:
    try:
        info = await js.stream_info(f"OBJ_{name}")
    except NotFoundError:
        config = ObjectStoreConfig(
            description=description, storage=StorageType.FILE, replicas=replicas or 1
        )
        await js.create_object_store(name, config)
        report.created.append(f"obj:{name}")
        return
    if replicas is not None and info.config.num_replicas != replicas:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
        report.updated[f"obj:{name}"] = ["num_replicas"]
    else:
        report.unchanged.append(f"obj:{name}")


async def provision(js: JetStreamContext, settings: StreamSettings | None = None) -> Report:
    """Create what is missing and update what differs; refuse what cannot change in place."""
    settings = settings or StreamSettings()
    wanted = streams(settings)
    # Check every stream before touching any, so a refusal leaves the system as it was.
    for i, want in enumerate(wanted):
        assert want.name is not None
        try:
            info = await js.stream_info(want.name)
        except NotFoundError:
            continue
        wanted[i] = _keep_partitions(info.config, want, settings.partitions)
        if settings.replicas is None:  # unset: what exists keeps its replicas
            wanted[i] = dataclasses.replace(wanted[i], num_replicas=info.config.num_replicas)
        for f in diff(info.config, wanted[i]):
            if f in IMMUTABLE:
                raise ProvisionError(want.name, f, getattr(info.config, f), getattr(want, f))
    report = Report()
    for want in wanted:
        await _ensure_stream(js, want, report)
    for b in BUCKETS:
        if b.name == "partitions":
            b = dataclasses.replace(b, max_age=settings.lease_s)
        await _ensure_bucket(js, b, settings.replicas, report)
    for name, description in OBJECT_STORES:
        await _ensure_object_store(js, name, description, settings.replicas, report)
    await _ensure_salt(js, report)
    return report


def _keep_partitions(have: StreamConfig, want: StreamConfig, asked: int | None) -> StreamConfig:
    """`want` with the partitioning `have` already has; `ProvisionError` if `asked` differs."""
    if want.name not in (ACTIVITY, CRM):
        return want
    current = partitions_of(have)
    if asked is not None and asked != current:
        raise ProvisionError(str(want.name), "partitions", current, asked)
    return dataclasses.replace(want, subject_transform=have.subject_transform)


async def _ensure_salt(js: JetStreamContext, report: Report) -> None:
    """The tombstones' salt (`engine.profiles.tombstones`): made once, here, by the admin
    credential, so no service needs to write it (a concurrent provisioning loses the
    compare-and-set and keeps the other's)."""
    try:
        await js.get_msg("KV_tombstones", subject=TOMBSTONE_SALT_SUBJECT, direct=True)
        return
    except NotFoundError:
        pass
    headers = {EXPECTED_LAST_SUBJECT_SEQ: "0"}
    with contextlib.suppress(APIError):  # another provisioning wrote it first
        await js.publish(TOMBSTONE_SALT_SUBJECT, secrets.token_bytes(32), headers=headers)
        report.created.append("kv:tombstones/salt")


async def require_provisioned(bus: Bus) -> None:
    """`ConfigError`, in one line, naming the streams, buckets and object stores of the design
    that do not exist and the command that creates them. Read from the stream names, which
    every credential may list, so a service's own credential can check what only an admin may
    create (`engine.runner`)."""
    js, found = bus._js, set[str]()
    while True:  # nats-py has no call for the names alone: its request helper, server-paged
        body = f'{{"offset":{len(found)}}}'.encode()
        page = await js._api_request(f"{js._prefix}.STREAM.NAMES", body)
        found |= set(page.get("streams") or ())
        if not page.get("streams") or len(found) >= int(page.get("total") or 0):
            break
    wanted = [str(c.name) for c in streams(StreamSettings())]
    wanted += [f"KV_{b.name}" for b in BUCKETS] + [f"OBJ_{n}" for n, _ in OBJECT_STORES]
    if absent := [name for name in wanted if name not in found]:
        raise ConfigError(
            f"the broker lacks {', '.join(absent)}: an admin creates them with `nerve init` "
            "(--nats-creds an admin credential; --replicas N on a cluster)"
        )
