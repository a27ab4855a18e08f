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
HOUR_MS = 60 * MINUTE_MS


class SiteRateShiftDetector:
    def __init__(self, name: str, cfg: SiteRateShift) -> None:
        self.name, self.cfg = name, cfg
        self.types = frozenset(cfg.types)
        self.window = int(cfg.window_minutes * MINUTE_MS)
        self.history: deque[float] = deque(maxlen=cfg.history)
        self.per_hour = max(1, round(HOUR_MS / self.window))
        """Windows in an hour: how many samples of an hour of day make a seasonal band."""
        self.by_hour: dict[int, deque[float]] = {}
        """Closed windows by hour of day (0-23), over the last `seasonal_days` days."""
        self.current: int | None = None
        """Index of the window being counted."""
        self.count = 0
        self.by_user: dict[str, int] = {}
        """Events counted per subject token in the current window (`max_per_user`)."""
        self.evidence: deque[Evidence] = deque(maxlen=MAX_EVIDENCE)
        self.fired_in: int | None = None
        self._band: tuple[int, tuple[float, float] | None] | None = None
        """(window, its band): the band of the window being counted, computed once."""

    @property
    def stream(self) -> str:
        return self.cfg.stream

    def matches(self, ev: Evidence) -> bool:
        return not self.types or ev.type in self.types

    def observe(self, ev: Evidence, token: str | None = None) -> Finding | None:
        """Advance to `ev`'s window (deciding a drop), then count it (deciding a rise); an
        event beyond `max_per_user` of its `token` in this window is not counted."""
        cfg = self.cfg
        k = ev.time // self.window
        found = None
        if self.current is None:
            self.current = k
        elif k > self.current:
            found = self._close(k, ev)
        if not self.matches(ev):
            return found
        if token is not None and cfg.max_per_user:
            seen = self.by_user.get(token, 0)
            if seen >= cfg.max_per_user:
                return found
            self.by_user[token] = seen + 1
        self.count += 1
        self.evidence.append(ev)
        if found is not None or cfg.direction == "down" or self.fired_in == self.current:
            return found
        band = self._baseline(self.current)
        if band is None or self.count < cfg.min_count:
            return None
        m, spread = band
        z = (self.count - m) / spread
        if z < cfg.threshold:
            return None
        self.fired_in = self.current
        return self._finding(z, self.count, list(self.evidence), ev, "above", self.current)

    def _close(self, k: int, ev: Evidence) -> Finding | None:
        """Close the windows before `k`: the one counted, then the empty ones between."""
        assert self.current is not None
        cfg = self.cfg
        gap = min(k - self.current - 1, max(cfg.history, cfg.seasonal_days * 24 * self.per_hour))
        closed = [self.count] + [0] * gap
        last = list(self.evidence)[-1:]
        found = None
        for i, n in enumerate(closed):
            window = self.current + i
            band = self._baseline(window)
            if found is None and band is not None and cfg.direction != "up":
                m, spread = band
                z = (n - m) / spread
                if z <= -cfg.threshold and m >= cfg.min_count:
                    found = self._finding(z, n, [*last, ev], ev, "below", window)
            self.history.append(float(n))
            self._seasonal(window).append(float(n))
            self._band = None
        self.current, self.count = k, 0
        self.by_user.clear()
        self.evidence.clear()
        return found

    def _seasonal(self, window: int) -> deque[float]:
        """The closed windows of `window`'s hour of day."""
        hour = (window * self.window // HOUR_MS) % 24
        if hour not in self.by_hour:
            self.by_hour[hour] = deque(maxlen=max(1, self.cfg.seasonal_days) * self.per_hour)
        return self.by_hour[hour]

    def _samples(self, window: int) -> tuple[float, ...]:
        """The band's samples for `window`: its hour of day on earlier days when there are
        enough of them (`seasonal_days`); until then none (no band: the hour is not judged),
        or with `seasonal_fallback` the last `history` windows, as without `seasonal_days`."""
        if self.cfg.seasonal_days:
            same = self._seasonal(window)
            if len(same) >= self.per_hour:
                return tuple(same)
            if not self.cfg.seasonal_fallback:
                return ()
        return tuple(self.history)

    def _baseline(self, window: int) -> tuple[float, float] | None:
        if self._band is not None and self._band[0] == window:
            return self._band[1]
        samples = self._samples(window)
        band = None
        if len(samples) >= MIN_WINDOWS:
            m, mad = robust(samples)
            band = (m, max(mad, self.cfg.min_spread))
        self._band = (window, band)
        return band

    def _finding(
        self, z: float, n: int, evidence: list[Evidence], ev: Evidence, word: str, window: int
    ) -> Finding:
        cfg = self.cfg
        samples = self._samples(window)
        m, mad = robust(samples)
        seasonal = cfg.seasonal_days > 0 and len(self._seasonal(window)) >= self.per_hour
        hour = (window * self.window // HOUR_MS) % 24
        band = (
            f"{len(samples)} windows of {cfg.window_minutes:g} min at {hour:02d}h on earlier days"
            if seasonal
            else f"the last {len(samples)} windows of {cfg.window_minutes:g} min"
        )
        what = "dead letters" if cfg.stream == "DEADLETTER" else "events"
        if cfg.types:
            what = f"{'/'.join(sorted(cfg.types))} {what}"
        baseline = Baseline(
            "site",
            "median_mad",
            f"{band} on {cfg.stream}",
            len(samples),
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
            f"{n} {what} in {cfg.window_minutes:g} min, {word} the band of {band}"
            f" (median {m:g}): z = {z:.1f}",
            "/".join(sorted(cfg.types)) or None,
            site=True,
        )
