"""`Detectors`: every configured detector over one log, with the cooldowns (broker-free).

Feed it the stored messages in log order: `observe` with the decoded ACTIVITY / CRM events
(every user's: each user detector keeps its own users, a replica passes only the users it owns
as `mine`), `observe_deadletter` with DEADLETTER records. It returns the findings that pass the
cooldown: at most one per detector and subject (`cooldown_minutes`, event time). The result is
a pure function of the messages fed, so two replicas or a restart compute the same findings
from the same log; the service makes sure each is stored once.
"""

from __future__ import annotations

from typing import Any

from engine.anomalies.base import Evidence, Finding
from engine.anomalies.config import AnomalyDef, NewContext, RateBurst, SiteRateShift, UnusualValue
from engine.anomalies.site import SiteRateShiftDetector
from engine.anomalies.user import (
    MINUTE_MS,
    NewContextDetector,
    RateBurstDetector,
    UnusualValueDetector,
)
from engine.profiles.profile import time_ms

UserDetector = RateBurstDetector | UnusualValueDetector | NewContextDetector


def build(name: str, cfg: AnomalyDef) -> UserDetector | SiteRateShiftDetector:
    if isinstance(cfg, RateBurst):
        return RateBurstDetector(name, cfg)
    if isinstance(cfg, UnusualValue):
        return UnusualValueDetector(name, cfg)
    if isinstance(cfg, NewContext):
        return NewContextDetector(name, cfg)
    assert isinstance(cfg, SiteRateShift)
    return SiteRateShiftDetector(name, cfg)


def evidence_of(event: dict[str, Any], stream: str, seq: int) -> Evidence:
    item = event.get("item_id")
    return Evidence(
        str(event.get("id")),
        stream,
        seq,
        str(event.get("type")),
        time_ms(event.get("time")),
        item if isinstance(item, str) else None,
    )


class Detectors:
    """The detectors of `definitions` (`[anomalies.<name>]`), fed in log order."""

    def __init__(self, definitions: dict[str, AnomalyDef]) -> None:
        self.definitions = definitions
        self.users: list[UserDetector] = []
        self.sites: list[SiteRateShiftDetector] = []
        for name, cfg in definitions.items():
            d = build(name, cfg)
            if isinstance(d, SiteRateShiftDetector):
                self.sites.append(d)
            else:
                self.users.append(d)
        self.cooldown = {n: int(c.cooldown_minutes * MINUTE_MS) for n, c in definitions.items()}
        self.last: dict[tuple[str, str], int] = {}
        """(detector, token) -> decided_at of the last finding let through."""

    @property
    def streams(self) -> set[str]:
        """The streams to read: ACTIVITY and CRM, and DEADLETTER if a detector counts it."""
        return {"ACTIVITY", "CRM"} | {d.stream for d in self.sites}

    def observe(
        self, token: str, event: dict[str, Any], stream: str, seq: int, *, mine: bool = True
    ) -> list[Finding]:
        """The findings one user event decides (user detectors only when `mine`)."""
        ev = evidence_of(event, stream, seq)
        found: list[Finding | None] = []
        if mine:
            found += [d.observe(token, event, ev) for d in self.users]
        if stream == "ACTIVITY":
            found += [d.observe(ev, token) for d in self.sites if d.stream == "ACTIVITY"]
        return self._cool(found)

    def observe_deadletter(self, record: dict[str, Any], seq: int) -> list[Finding]:
        """The findings one dead-letter record (`DeadLetter` JSON) decides."""
        ev = Evidence(
            str(record.get("id") or seq),
            "DEADLETTER",
            seq,
            str(record.get("source") or "unknown")[:64],
            time_ms(record.get("received_at")),
        )
        return self._cool([d.observe(ev) for d in self.sites if d.stream == "DEADLETTER"])

    def forget(self, token: str) -> None:
        """Drop what the user detectors keep about an erased user."""
        for d in self.users:
            d.forget(token)
        for key in [k for k in self.last if k[1] == token]:
            del self.last[key]

    def _cool(self, found: list[Finding | None]) -> list[Finding]:
        out = []
        for f in found:
            if f is None:
                continue
            key = (f.detector, f.token)
            last = self.last.get(key)
            if last is not None and f.decided_at - last < self.cooldown[f.detector]:
                continue
            self.last[key] = f.decided_at
            out.append(f)
        return out
