"""`GatewayState`: everything the gateway's routers share, built once by `create_app`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from engine.bus import Bus, ConnectionState
from engine.gateway.live import StreamLimits
from engine.metrics import Metrics
from engine.ops.received import Received
from engine.profiles.tombstones import Tombstones
from engine.recommender.catalog import ItemCatalog
from engine.settings import GatewaySettings, SiteKey

if TYPE_CHECKING:  # events.py depends on this module
    from engine.gateway.events import TokenBucket


@dataclass
class GatewayState:
    """The gateway's settings and connections. `bus` and `forgotten` exist while the app's
    lifespan runs (they are opened on start-up); the rest from construction. The gateway
    holds no profile store: it cannot decrypt profiles (the profiles service answers the
    internal profiles API)."""

    settings: GatewaySettings
    metrics: Metrics = field(default_factory=Metrics)
    connection: ConnectionState = field(default_factory=ConnectionState)
    catalog: ItemCatalog = field(default_factory=ItemCatalog)
    model_switched: float = field(default_factory=time.time)
    """When a model was last activated; lists stored before it (or before this gateway
    started, when none has been since) are not fresh."""
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    """Per site key, its rate limit (see `events.buckets_for`)."""
    keys: dict[str, SiteKey] = field(init=False)
    streams: StreamLimits = field(init=False)
    """Open live streams per site key and client address, against their caps."""
    received: Received = field(default_factory=Received)
    """ACTIVITY sequence -> received_at of the events this gateway stored (freshness)."""
    forgotten: Tombstones | frozenset[str] = frozenset()
    """Users erased by `nerve forget`: their events and lists are refused (410)."""
    _bus: Bus | None = None

    def __post_init__(self) -> None:
        self.keys = {k.key: k for k in self.settings.site_keys}
        self.streams = StreamLimits(
            self.settings.max_streams_per_key, self.settings.max_streams_per_client
        )

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the gateway is not started (its lifespan has not run)")
        return self._bus

    def open(self, bus: Bus, forgotten: Tombstones | frozenset[str] = frozenset()) -> None:
        """Attach what the lifespan connected; a fresh catalogue is filled from CATALOG."""
        self._bus, self.forgotten = bus, forgotten
        self.catalog = ItemCatalog()

    def close(self) -> None:
        self._bus = None


def gateway_state(request: Request) -> GatewayState:
    """The state of the app serving `request` (a FastAPI dependency)."""
    state: GatewayState = request.app.state.gateway
    return state
