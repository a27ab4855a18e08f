"""Per-user detectors: `rate_burst`, `unusual_value`, `new_context` (methods in `config`).

Each is an incremental fold over one user's events in log order (event time, not arrival
time): `observe` updates the state and returns a `Finding` when the event decides one. The
state is bounded per user (windows, amounts, contexts kept: see the parameters).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.anomalies.base import (
    MAX_EVIDENCE,
    Baseline,
    Evidence,
    Finding,
    amount_of,
    context_of,
    zscore,
)
from engine.anomalies.config import NewContext, RateBurst, UnusualValue

MINUTE_MS = 60_000
MAX_SEEN = 50
"""Distinct locales / user-agent families remembered per user."""


@dataclass
class _Rate:
    recent: deque[Evidence] = field(default_factory=deque)
    windows: dict[int, int] = field(default_factory=dict)


class RateBurstDetector:
    def __init__(self, name: str, cfg: RateBurst) -> None:
        self.name, self.cfg = name, cfg
        self.types = frozenset(cfg.types)
        self.window = int(cfg.window_seconds * 1000)
        self.horizon = int(cfg.history_minutes * MINUTE_MS)
        self.users: dict[str, _Rate] = {}

    def observe(self, token: str, event: dict[str, Any], ev: Evidence) -> Finding | None:
        if ev.type not in self.types:
            return None
        cfg, w, t = self.cfg, self.window, ev.time
        st = self.users.setdefault(token, _Rate())
        st.recent.append(ev)
        while st.recent and st.recent[0].time <= t - w:
            st.recent.popleft()
        if len(st.recent) > 10 * MAX_EVIDENCE:
            st.recent.popleft()
        k = t // w
        st.windows[k] = st.windows.get(k, 0) + 1
        while len(st.windows) > cfg.history + 2:
            del st.windows[next(iter(st.windows))]
        count = len(st.recent)
        if count < cfg.min_events:
            return None
        past = [
            float(n)
            for b, n in st.windows.items()
            if (b + 1) * w <= t - w and b * w >= t - self.horizon
        ][-cfg.history :]
        padded = past + [cfg.prior] * max(0, cfg.min_history - len(past))
        z, base = zscore(count, padded, cfg.min_spread)
        if z < cfg.threshold:
            return None
        seconds = f"{cfg.window_seconds:g} s"
        baseline = Baseline(
            "user",
            "median_mad",
            _rate_window(len(past), seconds, cfg.history_minutes, cfg.prior, cfg.min_history),
            len(padded),
            base.median,
            base.mad,
            base.spread,
        )
        return Finding(
            self.name,
            "rate_burst",
            token,
            round(z, 3),
            float(count),
            cfg.threshold,
            [baseline],
            list(st.recent)[-MAX_EVIDENCE:],
            ev,
            f"{count} {'/'.join(sorted(self.types))} in {seconds} against a median of "
            f"{base.median:g} (spread {base.spread:g}): z = {z:.1f}",
            ev.type,
        )

    def forget(self, token: str) -> None:
        self.users.pop(token, None)


class UnusualValueDetector:
    def __init__(self, name: str, cfg: UnusualValue) -> None:
        self.name, self.cfg = name, cfg
        self.types = frozenset(cfg.types)
        self.category: dict[str, str] = {}
        """Item -> category, as the log's item views name it."""
        self.segments: dict[str, deque[float]] = {}
        self.users: dict[tuple[str, str], deque[float]] = {}

    def segment_of(self, event: dict[str, Any]) -> str:
        props = event.get("properties") or {}
        if isinstance(props.get("simulator"), str):
            return f"simulator:{props['simulator']}"
        item = event.get("item_id")
        if item in self.category:
            return f"category:{self.category[item]}"
        return f"item:{item}"

    def observe(self, token: str, event: dict[str, Any], ev: Evidence) -> Finding | None:
        cfg = self.cfg
        if ev.type == "item_viewed" and ev.item_id is not None:
            cat = (event.get("properties") or {}).get("category")
            if isinstance(cat, str):
                self.category[ev.item_id] = cat
        if ev.type not in self.types:
            return None
        amount = amount_of(event)
        if amount is None or amount < 0:
            return None
        x = math.log1p(amount)
        seg = self.segment_of(event)
        seg_values = self.segments.setdefault(seg, deque(maxlen=cfg.segment_history))
        mine = self.users.setdefault((token, seg), deque(maxlen=cfg.user_history))
        found = self._judge(x, seg, list(seg_values), list(mine))
        seg_values.append(x)
        mine.append(x)
        if found is None:
            return None
        score, baselines = found
        word = "above" if score > 0 else "below"
        return Finding(
            self.name,
            "unusual_value",
            token,
            round(score, 3),
            amount,
            cfg.threshold,
            baselines,
            [ev],
            ev,
            f"{ev.type} of {amount:g} far {word} the usual in {seg} (log z = {score:.1f})",
            ev.type,
            extra={"segment": seg},
        )

    def _judge(
        self, x: float, seg: str, seg_values: list[float], mine: list[float]
    ) -> tuple[float, list[Baseline]] | None:
        """(score, baselines) when `x` is unusual against the segment and, with enough of
        them, against the user's own amounts; the score is the smaller z (both must hold)."""
        cfg = self.cfg
        if len(seg_values) < cfg.min_segment:
            return None
        zs, bs = zscore(x, seg_values, cfg.min_spread)
        zs_list, baselines = (
            [zs],
            [_named(bs, "segment", f"the last {len(seg_values)} amounts", seg)],
        )
        if len(mine) >= cfg.min_user:
            zu, bu = zscore(x, mine, cfg.min_spread)
            zs_list.append(zu)
            baselines.insert(0, _named(bu, "user", f"the user's last {len(mine)} amounts", seg))
        if cfg.direction == "high" or all(z > 0 for z in zs_list):
            score = min(zs_list)
        elif all(z < 0 for z in zs_list):
            score = max(zs_list)
        else:
            return None
        if abs(score) < cfg.threshold or (cfg.direction == "high" and score < 0):
            return None
        return score, baselines

    def forget(self, token: str) -> None:
        for key in [k for k in self.users if k[0] == token]:
            del self.users[key]


def _named(b: Baseline, of: str, window: str, segment: str) -> Baseline:
    what = f"{window} (log 1 + amount)"
    return Baseline(of, b.method, what, b.samples, b.median, b.mad, b.spread, segment=segment)


@dataclass
class _Contexts:
    seen: dict[str, set[str]] = field(default_factory=dict)
    events: int = 0
    pending: deque[tuple[Evidence, str, str, tuple[str, ...]]] = field(default_factory=deque)
    """(event from a new context, which context, its value, what had been seen before)."""


class NewContextDetector:
    def __init__(self, name: str, cfg: NewContext) -> None:
        self.name, self.cfg = name, cfg
        self.actions = frozenset(cfg.actions)
        self.window = int(cfg.window_minutes * MINUTE_MS)
        self.users: dict[str, _Contexts] = {}

    def observe(self, token: str, event: dict[str, Any], ev: Evidence) -> Finding | None:
        cfg, t = self.cfg, ev.time
        values = {name: context_of(event, name) for name in cfg.context}
        st = self.users.get(token)
        if st is None:
            if not any(values.values()) and ev.type not in self.actions:
                return None
            st = self.users[token] = _Contexts()
        named = False
        for name, value in values.items():
            if value is None:
                continue
            named = True
            seen = st.seen.setdefault(name, set())
            if st.events >= cfg.min_history and value not in seen:
                st.pending.append((ev, name, value, tuple(sorted(seen))))
            if len(seen) < MAX_SEEN:
                seen.add(value)
        st.events += named
        while st.pending and st.pending[0][0].time < t - self.window:
            st.pending.popleft()
        if ev.type not in self.actions or not st.pending:
            return None
        amount = amount_of(event)
        if amount is None or amount < cfg.min_value:
            return None
        first, which, value, before = st.pending[0]
        st.pending.clear()
        evidence = [first] if first == ev else [first, ev]
        baseline = Baseline(
            "user",
            "seen_before",
            f"the {which} of the user's earlier events",
            len(before),
            seen=before,
        )
        return Finding(
            self.name,
            "new_context",
            token,
            round(amount / cfg.min_value, 3),
            amount,
            1.0,
            [baseline],
            evidence,
            ev,
            f"{ev.type} of {amount:g} within {cfg.window_minutes:g} min of a first event from"
            f" {which} {value!r} (seen before: {', '.join(before) or 'none'})",
            ev.type,
        )

    def forget(self, token: str) -> None:
        self.users.pop(token, None)


def _rate_window(n: int, seconds: str, minutes: float, prior: float, least: int) -> str:
    """The words of a burst's baseline: its active windows, and the prior that pads them."""
    if n == 0:
        return f"no earlier active {seconds} window in {minutes:g} min: prior {prior:g} x {least}"
    text = f"the user's last {n} active {seconds} windows of {minutes:g} min"
    return text + (f", padded with {prior:g} to {least}" if n < least else "")
