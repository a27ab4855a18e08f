"""The site-wide detector `site_rate_shift`: one stream's rate leaving its band.

Windows are aligned on event time (`window_minutes`); every message of the stream advances the
clock, the matching ones are counted. Windows with no event count as 0, so a silent site is a
drop, decided by the first message after it (nothing in the log can decide it earlier).
"""

from __future__ import annotations

from collections import deque

from engine.anomalies.base import MAX_EVIDENCE, Baseline, Evidence, Finding, robust
from engine.anomalies.config import SiteRateShift
from engine.anomalies.user import MINUTE_MS
from nerve_client.subjects import SITE_TOKEN

MIN_WINDOWS = 3
"""Completed windows needed before the band means anything."""


class SiteRateShiftDetector:
    def __init__(self, name: str, cfg: SiteRateShift) -> None:
        self.name, self.cfg = name, cfg
        self.types = frozenset(cfg.types)
        self.window = int(cfg.window_minutes * MINUTE_MS)
        self.history: deque[float] = deque(maxlen=cfg.history)
        self.current: int | None = None
        """Index of the window being counted."""
        self.count = 0
        self.evidence: deque[Evidence] = deque(maxlen=MAX_EVIDENCE)
        self.fired_in: int | None = None
        self._band: tuple[float, float] | None = None

    @property
    def stream(self) -> str:
        return self.cfg.stream

    def matches(self, ev: Evidence) -> bool:
        return not self.types or ev.type in self.types

    def observe(self, ev: Evidence) -> Finding | None:
        """Advance to `ev`'s window (deciding a drop), then count it (deciding a rise)."""
        cfg = self.cfg
        k = ev.time // self.window
        found = None
        if self.current is None:
            self.current = k
        elif k > self.current:
            found = self._close(k, ev)
        if not self.matches(ev):
            return found
        self.count += 1
        self.evidence.append(ev)
        if found is not None or cfg.direction == "down" or self.fired_in == self.current:
            return found
        band = self._baseline()
        if band is None or self.count < cfg.min_count:
            return None
        m, spread = band
        z = (self.count - m) / spread
        if z < cfg.threshold:
            return None
        self.fired_in = self.current
        return self._finding(z, self.count, list(self.evidence), ev, "above")

    def _close(self, k: int, ev: Evidence) -> Finding | None:
        """Close the windows before `k`: the one counted, then the empty ones between."""
        assert self.current is not None
        cfg = self.cfg
        closed = [self.count] + [0] * min(k - self.current - 1, cfg.history)
        last = list(self.evidence)[-1:]
        found = None
        for n in closed:
            band = self._baseline()
            if found is None and band is not None and cfg.direction != "up":
                m, spread = band
                z = (n - m) / spread
                if z <= -cfg.threshold and m >= cfg.min_count:
                    found = self._finding(z, n, [*last, ev], ev, "below")
            self.history.append(float(n))
            self._band = None
        self.current, self.count = k, 0
        self.evidence.clear()
        return found

    def _baseline(self) -> tuple[float, float] | None:
        if len(self.history) < MIN_WINDOWS:
            return None
        if self._band is None:
            m, mad = robust(tuple(self.history))
            self._band = (m, max(mad, self.cfg.min_spread))
        return self._band

    def _finding(
        self, z: float, n: int, evidence: list[Evidence], ev: Evidence, word: str
    ) -> Finding:
        cfg = self.cfg
        m, mad = robust(tuple(self.history))
        what = "dead letters" if cfg.stream == "DEADLETTER" else "events"
        if cfg.types:
            what = f"{'/'.join(sorted(cfg.types))} {what}"
        baseline = Baseline(
            "site",
            "median_mad",
            f"the last {len(self.history)} windows of {cfg.window_minutes:g} min on {cfg.stream}",
            len(self.history),
            m,
            mad,
            max(mad, cfg.min_spread),
        )
        return Finding(
            self.name,
            "site_rate_shift",
            SITE_TOKEN,
            round(z, 3),
            float(n),
            cfg.threshold,
            [baseline],
            evidence[-MAX_EVIDENCE:],
            ev,
            f"{n} {what} in {cfg.window_minutes:g} min, {word} the band of the last"
            f" {len(self.history)} windows (median {m:g}): z = {z:.1f}",
            "/".join(sorted(cfg.types)) or None,
            site=True,
        )
