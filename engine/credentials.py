"""Broker credentials: who may connect to NATS, and what each may publish and subscribe.

The embedded nats-server never takes anonymous connections. On its first start it generates
one credential per component (`COMPONENTS`) under `<data_dir>/credentials/` (directory 0700,
each file 0600: a JSON object with `user`, `password`, `role` and `inbox_prefix`), and the
server's `authorization` block (`credentials/nats-auth.conf`, 0600, included by the server
config) gives each user the allow-lists below; everything not allowed is denied. `nerve
credentials add NAME --role crm|reader|admin` issues one for an outside service and `nerve
credentials revoke NAME` withdraws it: both rewrite the authorization block and reload the
running server (SIGHUP), so a revoked user is refused, and disconnected, without a restart.

Passwords are random (256 bits) and stored in plain text in those 0600 files: the `bcrypt`
package is not a dependency, so the server config cannot carry hashes. Whoever can read the
data dir is an operator, and operator commands (`nerve init`, `import`, `forget`, `train`, ...)
on that machine connect as `admin`.

Who holds which credential:

| credential | held by |
| --- | --- |
| `admin` | operator commands on the data dir's machine; provisioning and import in `nerve up` |
| `gateway` | the HTTP gateway (the internet-facing process) |
| `profiles`, `recommender`, `signals`, `anomalies`, `ops`, `warehouse`, `webhooks` | that service |
| `visitors` | the demo's synthetic visitors (`nerve demo`) |
| role `crm` | an outside CRM service (`nerve credentials add NAME --role crm`) |
| role `reader` | an outside read-only consumer (`--role reader`) |
| role `admin` | an outside operator tool (`--role admin`) |

What each may do (✓ allowed; everything else is denied; admin may do everything; every
role may also look up account limits and stream names):

|may|gateway|profiles|recommender|signals|anomalies|ops|warehouse|webhooks|visitors|crm|reader|
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| publish `activity.>` | ✓ | | | | | | | | ✓ | | |
| publish `crm.>` | | | | | | | | | | ✓ | |
| publish `crm.*.<CRM type>` (`POST /v1/crm/events`) | ✓ | | | | | | | | | | |
| publish `reco.>` (lists) | | | ✓ | | | | | | | | |
| publish `signals.>` | | | | ✓ | | | | | | | |
| publish `anomalies.>` | | | | | ✓ | | | | | | |
| publish `dlq.>` | ✓ | ✓ | ✓ | ✓ | | | ✓ | | | | |
| publish its own `dlq.webhooks` / `dlq.anomalies` | | | | | ✓ | | | ✓ | | | |
| request `reco.request` | ✓ | | | | | | | | | | |
| answer `reco.request` | | | ✓ | | | | | | | | |
| request `nerve.profiles.get` (internal profiles API) | ✓ | | | | | | | | | | |
| answer `nerve.profiles.get` | | ✓ | | | | | | | | | |
| request `nerve.ops.state` (operator console, `/metrics` gauges) | ✓ | | | | | | | | | | |
| request `nerve.ops.stats`, `nerve.ops.experiments` (the reports) | ✓ | | | | | | | | | | |
| answer `nerve.ops.state`, `nerve.ops.stats`, `nerve.ops.experiments` | | | | | | ✓ | | | | | |
| list streams and consumers (sizes, sequences, lag; no message) | | | | | | ✓ | | | | | |
| read ACTIVITY (ops: `/v1/stats`, `/v1/experiments`) | | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | | | | ✓ |
| read CRM | | ✓ | ✓ | ✓ | ✓ | | | | | | |
| read DEADLETTER (it counts dead letters) | | | | | ✓ | ✓ | | | | | |
| read GAVEUP (its consumers' max-delivery advisories) | | ✓ | ✓ | | | | | | | | |
| read CATALOG | ✓ | | ✓ | | | | | | ✓ | | |
| read RECOMMENDATIONS | ✓ | | ✓ | | | ✓ | | | | | ✓ |
| read SHADOW (experiments' shadow lists, for `/v1/experiments`) | | | | | | ✓ | | | | | |
| read SIGNALS | | | | ✓ | | ✓ | | ✓ | | ✓ | ✓ |
| read ANOMALIES | | | | | ✓ | ✓ | | ✓ | | ✓ | ✓ |
| read KV `profiles` | | ✓ | ✓ | ✓ | | | | | | | |
| read KV `userkeys` (profile keys) | | ✓ | ✓ | ✓ | | | | | | | |
| write KV `profiles`, `userkeys` | | ✓ | | | | | | | | | |
| read KV `registry`, objects `models` | | | ✓ | ✓ | | | | | | | |
| read KV `registry` (cards, experiments: console, `/v1/experiments`) | | | | | | ✓ | | | | | |
| read KV `tombstones` | ✓ | ✓ | ✓ | ✓ | ✓ | | | | | | |
| read KV `webhooks` (subscriptions, signing secrets) | | | | | | | | ✓ | | | |
| publish `shadow.>` (experiments' shadow lists, SHADOW) | | | ✓ | | | | | | | | |
| core `$KV.registry.experiment.>` (experiments started, stopped) | | | ✓ | | | | | | | | |
| read/write KV `partitions` (partition leases) | | | ✓ | ✓ | | | | | | | |
| write KV `health` (heartbeats, any key) | | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | | | |
| read KV `health` (for `/healthz`; ops: the console) | ✓ | | | | | ✓ | | | | | |
| core `reco.>` (live lists) | ✓ | | | | | | | | | | |
| core `model_published` | ✓ | | ✓ | | | | | | | | |
| core `nerve.control.forget` | ✓ | ✓ | ✓ | ✓ | ✓ | | | | | | |
| create/update/delete/purge streams | | | | | | | | | | | |
| delete messages (secure erasure) | | | | | | | | | | | |

Every credential except admin may also subscribe only to its own reply inbox,
`_INBOX_<user>.>` (the client sets that prefix, `Credential.inbox_prefix`), so one credential
cannot read the replies another receives. "Reads" means: stream info, consumer create / info /
next / delete, acknowledgements and flow control, direct and stored message gets of that
stream (KV bucket `b` is stream `KV_b`, object store `o` is `OBJ_o`). Only admin may create,
update, delete or purge streams, or delete single messages (`nerve forget`'s secure erasure).
The gateway cannot read the `profiles` or `userkeys` buckets at all: the internet-facing
process holds no profile decryption key, and the internal profiles API asks the profiles
service (`nerve.profiles.get`), which decrypts and answers. Likewise it reads no stream or
consumer info, dead letters (rejected bodies), signals, anomalies, registry, no event of
ACTIVITY and no shadow list: the operator console and `/metrics` ask the ops service
(`nerve.ops.state`), and `/v1/stats` and `/v1/experiments` ask it for their reports
(`nerve.ops.stats`, `nerve.ops.experiments`). The ops service may read those, ACTIVITY,
RECOMMENDATIONS and SHADOW included (the reports count them), and nothing of CRM or the
profiles; it answers with aggregates (its stream listing carries sizes and sequences, the
reports counts and rates), never a message or a subject.
Limits of the allow-lists: a credential that may read a stream may also create, update or
delete any consumer on it (consumer names are not scoped per credential); a service may write
any `health` key (a key is `<service>[-replica].<host>-<pid>`, not a token of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.settings import BrokerSettings
from nerve_client.credentials import Credential, Tls
from nerve_client.events.envelope import CRM_TYPES
from nerve_client.subjects import (
    OPS_EXPERIMENTS_SUBJECT,
    OPS_REQUEST_SUBJECT,
    OPS_STATS_SUBJECT,
    crm_type_filter,
    deadletter_subject,
)

COMPONENTS = (
    "admin",
    "gateway",
    "profiles",
    "warehouse",
    "recommender",
    "signals",
    "anomalies",
    "ops",
    "webhooks",
    "visitors",
)
"""The engine's own credentials, generated on the embedded broker's first start."""
OUTSIDE_ROLES = ("crm", "reader", "admin")
"""The roles `nerve credentials add` issues."""
_PROFILE_REQUEST = "nerve.profiles.get"
_MODEL_PUBLISHED = "activity.~system.model_published"
_FORGET = "nerve.control.forget"
_OPS_SUBJECTS = (OPS_REQUEST_SUBJECT, OPS_STATS_SUBJECT, OPS_EXPERIMENTS_SUBJECT)
"""What the gateway asks the ops service (the console's state, the reports) and it answers."""


@dataclass(frozen=True)
class Grant:
    """A user's allow-lists (deny everything else)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


READ_TEMPLATES = (
    "$JS.API.STREAM.INFO.{stream}",
    "$JS.API.CONSUMER.CREATE.{stream}",
    "$JS.API.CONSUMER.CREATE.{stream}.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
    "$JS.API.CONSUMER.INFO.{stream}.>",
    "$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
    "$JS.API.CONSUMER.DELETE.{stream}.>",
    "$JS.API.DIRECT.GET.{stream}",
    "$JS.API.DIRECT.GET.{stream}.>",
    "$JS.API.STREAM.MSG.GET.{stream}",
    "$JS.ACK.{stream}.>",
    "$JS.FC.{stream}.>",
)
"""The JetStream API subjects (server-defined) that reading one stream needs: its info,
consumers (create, info, next message, delete), acknowledgements, flow control, message gets.
Permission patterns, not subjects Nerve publishes on, so they live here beside the grants."""
KV_PUT_TEMPLATE = "$KV.{bucket}.>"


def reads(*streams: str) -> tuple[str, ...]:
    """The JetStream API subjects that read `streams` (consumers, acks, gets; no admin)."""
    return tuple(t.format(stream=s) for s in streams for t in READ_TEMPLATES)


def kv(*buckets: str, write: bool = False) -> tuple[str, ...]:
    """Read (and with `write`, put) KV `buckets`."""
    out = list(reads(*("KV_" + b for b in buckets)))
    if write:
        out += [KV_PUT_TEMPLATE.format(bucket=b) for b in buckets]
    return tuple(out)


def objects(*stores: str) -> tuple[str, ...]:
    """Read object `stores`."""
    return reads(*("OBJ_" + o for o in stores))


_HEARTBEAT = ("$JS.API.STREAM.INFO.KV_health", KV_PUT_TEMPLATE.format(bucket="health"))
"""Write heartbeats to KV `health` (`engine.health`), read none."""
_STREAM_INFO = ("$JS.API.STREAM.LIST", "$JS.API.CONSUMER.LIST.*")
"""Every stream's and consumer's info (sizes, sequences, lag): metadata, no message. Not
`STREAM.INFO.*`, which can list a stream's subjects (and so its user tokens)."""


_ALL = Grant((">",), (">",), allow_responses=True)
_LOOKUPS = ("$JS.API.INFO", "$JS.API.STREAM.NAMES")  # every role: account limits, stream names
_TOMBSTONES = kv("tombstones")  # read only: provisioning (admin) makes the salt
_PROFILE_READ = kv("profiles", "userkeys")
_MODELS = kv("registry") + objects("models")
_CRM_PUBLISH = tuple(crm_type_filter(t) for t in sorted(CRM_TYPES))
"""The gateway stores CRM events posted to `POST /v1/crm/events`: those types, nothing else
on `crm.>` (a CRM credential publishes there directly)."""
_LEASES = (*kv("partitions", write=True), "$JS.API.STREAM.MSG.DELETE.KV_partitions")
"""The partition leases (`engine.bus.leases`): claim, renew and release (a release deletes the
holder's own revision)."""
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    # role: (publish, core subscribe, allow_responses); the inbox is added per user
    "gateway": (
        (
            "activity.>",
            *_CRM_PUBLISH,
            "dlq.>",
            "reco.request",
            _PROFILE_REQUEST,
            *_OPS_SUBJECTS,
            *reads("CATALOG", "RECOMMENDATIONS"),
            *kv("tombstones", "health"),
        ),
        ("reco.>", _MODEL_PUBLISHED, _FORGET),
        False,
    ),
    "profiles": (
        (
            "dlq.>",
            *reads("ACTIVITY", "CRM", "GAVEUP"),
            *kv("profiles", "userkeys", write=True),
            *_TOMBSTONES,
            *_HEARTBEAT,
        ),
        (_FORGET, _PROFILE_REQUEST),
        True,
    ),
    "recommender": (
        (
            "reco.>",
            "shadow.>",
            "dlq.>",
            *reads("ACTIVITY", "CRM", "CATALOG", "RECOMMENDATIONS", "GAVEUP"),
            *_PROFILE_READ,
            *_MODELS,
            *_TOMBSTONES,
            *_HEARTBEAT,
            *_LEASES,
        ),
        ("reco.request", _MODEL_PUBLISHED, _FORGET, "$KV.registry.experiment.>"),
        True,
    ),
    "signals": (
        (
            "signals.>",
            "dlq.>",
            *reads("ACTIVITY", "CRM", "SIGNALS"),
            *_PROFILE_READ,
            *_MODELS,
            *_TOMBSTONES,
            *_HEARTBEAT,
            *_LEASES,
        ),
        (_FORGET,),
        False,
    ),
    # anomalies: reads the log (and the dead letters it counts), publishes only its findings
    # and its own dead letters; no profiles, no models
    "anomalies": (
        (
            "anomalies.>",
            deadletter_subject("anomalies"),
            *reads("ACTIVITY", "CRM", "DEADLETTER", "ANOMALIES"),
            *_TOMBSTONES,
            *_HEARTBEAT,
        ),
        (_FORGET,),
        False,
    ),
    # ops: the operator console's state for the gateway (engine.services.ops): stream and
    # consumer info, the dead letters, signals and anomalies it lists, the registry's cards,
    # the heartbeats; the reports of /v1/stats and /v1/experiments (engine.ops.reports): the
    # log, the served and shadow lists, the experiments; it publishes nothing but its heartbeat
    "ops": (
        (
            *_STREAM_INFO,
            *reads("DEADLETTER", "SIGNALS", "ANOMALIES", "ACTIVITY", "RECOMMENDATIONS", "SHADOW"),
            *kv("registry", "health"),
            KV_PUT_TEMPLATE.format(bucket="health"),
        ),
        _OPS_SUBJECTS,
        True,
    ),
    "warehouse": (("dlq.>", *reads("ACTIVITY"), *_HEARTBEAT), (), False),
    # webhooks: its consumers on SIGNALS and ANOMALIES (one per subscription), the
    # subscriptions, the dead letters of deliveries it gave up on; no publish anywhere else
    "webhooks": (
        (
            deadletter_subject("webhooks"),
            *reads("SIGNALS", "ANOMALIES"),
            *kv("webhooks"),
            *_HEARTBEAT,
        ),
        (),
        False,
    ),
    "visitors": (("activity.>", *reads("CATALOG")), (), False),
    "crm": (("crm.>", *reads("SIGNALS", "ANOMALIES")), (), False),
    "reader": (reads("ACTIVITY", "RECOMMENDATIONS", "SIGNALS", "ANOMALIES"), (), False),
}
"""What each role may do besides admin (which may do everything); see the module table."""


def grant(role: str, user: str) -> Grant:
    """The allow-lists of `user` holding `role` (its own inbox added)."""
    if role == "admin":
        return _ALL
    publish, subscribe, responses = ROLES[role]
    return Grant((*_LOOKUPS, *publish), (*subscribe, inbox_prefix(user) + ".>"), responses)


def inbox_prefix(user: str) -> str:
    """The reply-inbox prefix of `user`: `_INBOX_<user>` (admin keeps nats-py's `_INBOX`)."""
    return "_INBOX" if user == "admin" else "_INBOX_" + user


def url_with(url: str, cred: Credential) -> str:
    """`url` carrying `cred`'s user and password (for code that connects with a URL only);
    every URL of a comma-separated list (a cluster's) carries them."""
    if "," in url:
        return ",".join(url_with(u.strip(), cred) for u in url.split(",") if u.strip())
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{cred.user}:{cred.password}@{rest.rpartition('@')[2]}"


def redact(url: str) -> str:
    """`url` without its password (each URL of a comma-separated list), for messages and logs."""
    if "," in url:
        return ",".join(redact(u) for u in url.split(","))
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}"


def tls_of(settings: BrokerSettings) -> Tls | None:
    """The TLS files of `settings`, or None when TLS is not configured."""
    if settings.nats_tls_ca is None and settings.nats_tls_cert is None:
        return None
    return Tls(settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key)
