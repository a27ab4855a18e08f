"""The operator console's state: its models (`OpsState`, `engine.ops.models`) and how it is
read from the broker (`engine.ops.state`, `engine.ops.deadletters`).

The ops service (`engine.services.ops`, its own read-only broker credential) keeps a `Watch`
and answers `nerve.ops.state` with `state_of`; the gateway's `/ops/state` and `/metrics` ask it
(`engine.gateway.console`, `engine.gateway.ops`), so the internet-facing process reads no
stream info, dead letters, signals, anomalies or registry itself.
"""

from engine.ops.deadletters import Tally, following, reason_key
from engine.ops.models import EXPERIMENTS, NO_DETECTOR, TALLY, OpsState
from engine.ops.state import Watch, state_of

__all__ = [
    "EXPERIMENTS",
    "NO_DETECTOR",
    "TALLY",
    "OpsState",
    "Tally",
    "Watch",
    "following",
    "reason_key",
    "state_of",
]
