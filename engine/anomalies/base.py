"""What every detector shares: evidence, baselines, findings, the robust statistics.

A robust z-score compares a value with the median of its baseline, in units of the scaled
median absolute deviation (1.4826 MAD, which equals the standard deviation for normal data but
is not dragged by the outliers it is meant to find), floored at a per-detector `min_spread` so a
perfectly regular baseline (MAD 0) does not make every small change infinite.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from engine.evidence import Evidence

MAD_SCALE = 1.4826
MAX_EVIDENCE = 100


@dataclass(frozen=True)
class Baseline:
    """What a value was compared with (`anomaly_detected.properties.baseline[]`)."""

    of: str
    method: str
    window: str
    samples: int
    median: float | None = None
    mad: float | None = None
    spread: float | None = None
    seen: tuple[str, ...] = ()
    segment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "of": self.of,
            "method": self.method,
            "window": self.window,
            "samples": self.samples,
        }
        for name in ("median", "mad", "spread"):
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 4)
        if self.seen:
            out["seen"] = list(self.seen)[:50]
        if self.segment is not None:
            out["segment"] = self.segment
        return out


@dataclass
class Finding:
    """A detector fired: about `token` (a user's, or `SITE_TOKEN`), decided by `deciding`."""

    detector: str
    kind: str
    token: str
    score: float
    value: float
    threshold: float
    baselines: list[Baseline]
    evidence: list[Evidence]
    deciding: Evidence
    description: str
    event_type: str | None = None
    site: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def decided_at(self) -> int:
        return self.deciding.time


def robust(values: list[float] | tuple[float, ...]) -> tuple[float, float]:
    """(median, 1.4826 x median absolute deviation) of `values` (not empty)."""
    m = median(values)
    return m, MAD_SCALE * median([abs(v - m) for v in values])


def zscore(value: float, values: list[float], min_spread: float) -> tuple[float, Baseline]:
    """The robust z of `value` against `values`, and a baseline (its `of`/`window` blank)."""
    m, mad = robust(values)
    spread = max(mad, min_spread)
    z = (value - m) / spread
    return z, Baseline("", "median_mad", "", len(values), m, mad, spread)


def amount_of(event: dict[str, Any]) -> float | None:
    """The money an event is about: a purchase's `value`, a simulation's `amount`."""
    props = event.get("properties") or {}
    value = props.get("value", props.get("amount"))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


_BROWSERS = (
    ("Edge", re.compile(r"\bEdg(e|A|iOS)?/")),
    ("Opera", re.compile(r"\b(OPR|Opera)/")),
    ("Firefox", re.compile(r"\b(Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"\b(Chrome|CriOS|Chromium)/")),
    ("Safari", re.compile(r"\bSafari/")),
    ("tool", re.compile(r"(?i)\b(bot|crawler|spider|curl|wget|python|httpx|go-http|java)\b")),
)
_SYSTEMS = (
    ("Android", re.compile(r"\bAndroid\b")),
    ("iOS", re.compile(r"\b(iPhone|iPad|iPod)\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b|\bMacintosh\b")),
    ("Linux", re.compile(r"\b(Linux|X11|CrOS)\b")),
)


def ua_family(user_agent: str) -> str:
    """`browser/OS` of a User-Agent, versions left out (an upgrade is not a new context)."""
    browser = next((name for name, rx in _BROWSERS if rx.search(user_agent)), "other")
    system = next((name for name, rx in _SYSTEMS if rx.search(user_agent)), "other")
    return f"{browser}/{system}"


def context_of(event: dict[str, Any], name: str) -> str | None:
    """The normalised `locale` or user-agent family an event was sent from, if it says."""
    ctx = event.get("context") or {}
    value = ctx.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    if name == "user_agent":
        return ua_family(value)
    return value.strip().lower().replace("_", "-")
