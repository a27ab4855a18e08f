"""Planted anomalies (`nerve generate --anomalies RATE`): four kinds of unusual behaviour added
to a synthetic history, each recorded in a truth file, so a detector is measured, not asserted.

What is planted, and where (step 7 of the model in `engine.synth`):

* **Home context.** With anomalies on, every clean event of a user carries that user's one
  home `context` (a locale and a browser user agent drawn once per user): the baseline that a
  new context is new against. Drawn from a generator of its own, so the clean events, their
  ids and their order are the same whatever the rate.
* **rate_burst** (a stuck client, a scraper with the user's cookies): one user sends
  `BURST_EVENTS` (40-80) events of one of `BURST_TYPES` (`item_viewed`) within
  `BURST_SPAN_MS` (60-90 s), from their home context, at a uniform time after their first
  session. A clean user views one item or two a minute.
* **unusual_value**: one event with an amount far outside both the user's and the segment's
  distribution, after an `item_viewed` of the product: half of the cases a `simulator_used`
  of the user's segment's credit kind, half an `item_purchased` of a non-credit product. Its
  amount lies `VALUE_Z` (6-8) robust standard deviations above the median of the clean
  amounts of its segment (the simulator, or the product's category), in log(1 + amount):
  `exp(median + z x 1.4826 MAD) - 1`, the spread at least `MIN_SPREAD`. The user's own
  amounts (a few at most) lie inside their segment's. The deciding event is that one.
* **new_context** (an account takeover): a session from a locale and a user-agent family
  (browser and operating system) the user never used: `page_viewed` home as a new anonymous
  visitor, a login (`user_identified`) 5-60 s later, then within 2-10 minutes a product of
  the segment's credit kind is viewed, simulated for at least `HIGH_VALUE` (10,000 EUR, 1 to
  2.5 times that; an amount usual for its simulator: the deciding event, a high-value
  action), put in the cart and bought at a usual value.
* **site_rate_shift** (a bot crawl): for `SHIFT_MINUTES` (20-30) minutes in the daytime
  (09:00-20:00) of a day other than the first, anonymous visitors (a new id per event, a
  script's user agent) add events of one type (`page_viewed` or `search_performed`) at the
  largest of `SHIFT_FACTOR` (10) times that type's mean per-minute rate at that hour,
  `SHIFT_TOTAL` (2) times the site's total rate at that hour, and `SHIFT_MIN_PER_MINUTE`.
  Shifts fall on distinct days.

**Rates.** `rate` is the fraction of users planted with *each* per-user kind: round(rate x
users) users per kind (at least one when rate > 0), three disjoint sets, so 3 x rate of the
users are anomalous; users whose first login leaves less than an hour before the end are not
chosen. `site_shifts` site-wide shifts in all (default one per week of history, at least one).

**Truth file** `<stem>.anomalies.jsonl`, one case per line: `kind`, `user` (the user id, or
`"site"`), `start` and `end` (the first and last planted event's time, RFC 3339), `event_ids`
(every planted event of the case, in time order), `deciding` (the event that makes it an
anomaly, when there is one: the unusual amount, the purchase after the new login; `null` for
rates, whose deciding event is whichever crosses the detector's threshold) and `detail`
(what was planted: type, count, amount, contexts).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.synth.model import (
    CATALOGUE,
    CREDIT,
    HOURS,
    Product,
    Segment,
    iso,
    simulation,
)

KINDS = ("rate_burst", "unusual_value", "new_context", "site_rate_shift")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
BURST_EVENTS = (40, 80)
BURST_SPAN_MS = (60_000, 90_000)
BURST_TYPES = ("item_viewed",)
"""What a burst sends: item views (a scraper), what the shipped `bursts` detector watches."""
VALUE_Z = (6.0, 8.0)
MIN_SPREAD = 0.1
"""Floor of the robust spread of log amounts that an unusual value is planted against."""
SHIFT_MINUTES = (20, 30)
SHIFT_FACTOR = 10.0
SHIFT_TOTAL = 2.0
"""A shift adds at least this many times the site's total rate at that hour, so it is a shift
of the site's rate too, not only of its type's."""
SHIFT_MIN_PER_MINUTE = 30
SHIFT_TYPES = ("page_viewed", "search_performed")
HIGH_VALUE = 10_000.0
"""A new-context case simulates at least this amount (EUR): its high-value action."""
BOT_AGENT = "python-requests/2.31.0"

LOCALES = ("nl-NL", "nl-NL", "nl-NL", "en-GB", "de-DE", "fr-FR")
"""Home locales (repeated entries weigh more); a new context uses one of `FOREIGN_LOCALES`."""
FOREIGN_LOCALES = ("pt-BR", "ru-RU", "tr-TR", "vi-VN", "id-ID", "ro-RO")
AGENTS: tuple[tuple[str, str, str], ...] = (
    ("chrome", "windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 Safari/537.36"),
    ("safari", "ios", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Safari/604.1"),
    ("chrome", "android", "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/124.0 Mobile"),
    ("firefox", "linux", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    ("safari", "macos", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Version/17.4 Safari/605.1"),
    ("edge", "windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 Edg/124.0"),
)
"""User agents as (browser, operating system, string): the family is browser and OS."""

Emit = Callable[..., str]
"""`_Site.emit(ms, type, who, item, props, sid, rnd=, context=)` returning the event id."""


@dataclass
class Case:
    """One planted anomaly: a line of the truth file."""

    kind: str
    user: str
    event_ids: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    deciding: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        line = {
            "kind": self.kind,
            "user": self.user,
            "start": iso(min(self.times)),
            "end": iso(max(self.times)),
            "event_ids": self.event_ids,
            "deciding": self.deciding,
            "detail": self.detail,
        }
        return orjson.dumps(line) + b"\n"


def home_contexts(seed: int, users: int) -> list[dict[str, str]]:
    """Each user's one home context (locale, user agent), from a generator of its own."""
    rnd = random.Random(f"nerve-synth-context/{seed}")
    return [
        {"locale": rnd.choice(LOCALES), "user_agent": rnd.choice(AGENTS)[2]} for _ in range(users)
    ]


def per_kind(rate: float, users: int) -> int:
    """How many users get each per-user kind at `rate`."""
    if not 0 <= rate <= 1 / 3:
        raise ValueError("the anomaly rate is a fraction of users per kind, from 0 to 1/3")
    return max(1, round(rate * users)) if rate > 0 else 0


class Planter:
    """Adds the cases to a simulated site through its `emit`, with a generator of its own."""

    def __init__(
        self, emit: Emit, seed: int, start_ms: int, end_ms: int, amounts: dict[str, list[float]]
    ) -> None:
        self.emit = emit
        self.rnd = random.Random(f"nerve-synth-anomalies/{seed}")
        self.start_ms, self.end_ms = start_ms, end_ms
        self.amounts = amounts
        self.cases: list[Case] = []

    def unusual(self, segment: str, z: float) -> float:
        """An amount `z` robust standard deviations (1.4826 MAD) of log(1 + amount) above the
        median of the segment's clean amounts."""
        logs = np.log1p(np.array(self.amounts.get(segment) or [1000.0]))
        median = float(np.median(logs))
        spread = max(1.4826 * float(np.median(np.abs(logs - median))), MIN_SPREAD)
        return float(np.expm1(median + z * spread))

    def plant(
        self,
        rate: float,
        segments: list[Segment],
        first_login: list[int],
        contexts: list[dict[str, str]],
        rates: dict[str, float],
        site_shifts: int,
    ) -> list[Case]:
        """Every case: the per-user kinds on disjoint users, then the site-wide shifts."""
        n = per_kind(rate, len(segments))
        eligible = [u for u, t in enumerate(first_login) if t + HOUR_MS < self.end_ms - 2 * HOUR_MS]
        if 3 * n > len(eligible):
            raise ValueError(f"{3 * n} anomalous users asked for; {len(eligible)} can have one")
        chosen = self.rnd.sample(eligible, 3 * n)
        for i, u in enumerate(chosen):
            t = self.rnd.randrange(first_login[u] + HOUR_MS, self.end_ms - 2 * HOUR_MS)
            user = f"u{u:07d}"
            if i < n:
                self._burst(user, t, contexts[u])
            elif i < 2 * n:
                self._value(user, t, segments[u], contexts[u])
            else:
                self._context(user, t, segments[u], contexts[u])
        days = (self.end_ms - self.start_ms) // DAY_MS
        for day in sorted(self.rnd.sample(range(1, days), min(site_shifts, days - 1))):
            self._shift(day, rates)
        return self.cases

    def _add(
        self,
        case: Case,
        ms: int,
        etype: str,
        who: dict[str, str],
        item: str | None,
        props: dict[str, Any],
        sid: str,
        ctx: dict[str, str],
    ) -> str:
        eid = self.emit(ms, etype, who, item, props, sid, rnd=self.rnd, context=ctx)
        case.event_ids.append(eid)
        case.times.append(ms)
        return eid

    def _burst(self, user: str, t: int, ctx: dict[str, str]) -> None:
        rnd = self.rnd
        etype = rnd.choice(BURST_TYPES)
        count = rnd.randint(*BURST_EVENTS)
        span = rnd.randint(*BURST_SPAN_MS)
        case = Case("rate_burst", user, detail={"type": etype, "count": count, "span_ms": span})
        sid = f"s{user[1:]}-burst"
        for ms in sorted(t + rnd.randrange(span) for _ in range(count)):
            item, props = _burst_event(etype, rnd.choice(CATALOGUE))
            self._add(case, ms, etype, {"user_id": user}, item, props, sid, ctx)
        self.cases.append(case)

    def _value(self, user: str, t: int, seg: Segment, ctx: dict[str, str]) -> None:
        rnd = self.rnd
        who, sid = {"user_id": user}, f"s{user[1:]}-value"
        z = round(rnd.uniform(*VALUE_Z), 2)
        if rnd.random() < 0.5:
            prod = rnd.choice([p for p in CATALOGUE if p.category == seg.credit_kind])
            props = simulation(prod, seg, rnd)
            segment = f"simulator:{props['simulator']}"
            props = _with_amount(props, round(self.unusual(segment, z), -2))
            etype, value = "simulator_used", props["amount"]
        else:
            prod = rnd.choice([p for p in CATALOGUE if p.category not in CREDIT])
            segment = f"category:{prod.category}"
            props = {"value": round(self.unusual(segment, z), 2)}
            etype, value = "item_purchased", props["value"]
        case = Case("unusual_value", user)
        case.detail = {"type": etype, "item_id": prod.item_id, "value": value, "segment": segment}
        case.detail["z"] = z
        view = {"category": prod.category}
        self._add(case, t, "item_viewed", who, prod.item_id, view, sid, ctx)
        t += rnd.randrange(20_000, 180_000)
        case.deciding = self._add(case, t, etype, who, prod.item_id, props, sid, ctx)
        self.cases.append(case)

    def _context(self, user: str, t: int, seg: Segment, home: dict[str, str]) -> None:
        rnd = self.rnd
        browser, system, _ = next(a for a in AGENTS if a[2] == home["user_agent"])
        agent = rnd.choice([a for a in AGENTS if a[0] != browser and a[1] != system])
        ctx = {"locale": rnd.choice(FOREIGN_LOCALES), "user_agent": agent[2]}
        anon = f"a{rnd.getrandbits(62):016x}"
        sid = f"s{user[1:]}-context"
        case = Case("new_context", user)
        home_page = {"page_type": "home"}
        self._add(case, t, "page_viewed", {"anonymous_id": anon}, None, home_page, sid, ctx)
        t += rnd.randrange(5_000, 60_000)
        both = {"user_id": user, "anonymous_id": anon}
        self._add(case, t, "user_identified", both, None, {"method": "login"}, sid, ctx)
        prod = rnd.choice([p for p in CATALOGUE if p.category == seg.credit_kind])
        sim = simulation(prod, seg, rnd)
        floor = round(HIGH_VALUE * rnd.uniform(1.0, 2.5), -2)
        steps: list[tuple[str, dict[str, Any]]] = [
            ("item_viewed", {"category": prod.category}),
            ("simulator_used", _with_amount(sim, max(sim["amount"], floor))),
            ("item_added_to_cart", {"price": prod.value}),
            ("item_purchased", {"value": round(prod.value * rnd.lognormvariate(0, 0.3), 2)}),
        ]
        step = rnd.randrange(2 * MINUTE_MS, 10 * MINUTE_MS) // len(steps)
        for etype, props in steps:
            t += step
            eid = self._add(case, t, etype, {"user_id": user}, prod.item_id, props, sid, ctx)
            if etype == "simulator_used":
                case.deciding = eid
        case.detail = {"home": home, "new": ctx, "item_id": prod.item_id}
        self.cases.append(case)

    def _shift(self, day: int, rates: dict[str, float]) -> None:
        rnd = self.rnd
        etype = rnd.choice(SHIFT_TYPES)
        hour = rnd.randint(9, 19)
        minutes = rnd.randint(*SHIFT_MINUTES)
        hour_weight = float(HOURS[hour] / HOURS.mean())
        at_hour = rates.get(etype, 0.0) * hour_weight
        site_at_hour = sum(rates.values()) * hour_weight
        per_minute = max(
            SHIFT_MIN_PER_MINUTE, round(SHIFT_FACTOR * at_hour), round(SHIFT_TOTAL * site_at_hour)
        )
        t0 = self.start_ms + day * DAY_MS + hour * HOUR_MS + rnd.randrange(30 * MINUTE_MS)
        case = Case("site_rate_shift", "site")
        case.detail = {
            "type": etype,
            "per_minute": per_minute,
            "minutes": minutes,
            "baseline_per_minute": round(at_hour, 2),
        }
        ctx, sid = {"user_agent": BOT_AGENT}, f"bot-{day}"
        times = sorted(t0 + rnd.randrange(minutes * MINUTE_MS) for _ in range(per_minute * minutes))
        for ms in times:
            anon = {"anonymous_id": f"b{rnd.getrandbits(62):016x}"}
            item, props = _burst_event(etype, rnd.choice(CATALOGUE))
            self._add(case, ms, etype, anon, item, props, sid, ctx)
        self.cases.append(case)


def _burst_event(etype: str, prod: Product) -> tuple[str | None, dict[str, Any]]:
    if etype == "item_viewed":
        return prod.item_id, {"category": prod.category}
    if etype == "search_performed":
        return None, {"query": prod.category, "results_count": 8}
    return None, {"page_type": "category", "path": f"/{prod.category}"}


def _with_amount(props: dict[str, Any], amount: float) -> dict[str, Any]:
    rate, term = props["annual_rate"], props["term_months"]
    monthly = amount * (rate / 1200) / (1 - (1 + rate / 1200) ** -term)
    return {**props, "amount": amount, "monthly_payment": round(monthly, 2)}


def write_truth(path: Path, cases: list[Case]) -> Path:
    with path.open("wb") as f:
        f.writelines(c.to_json() for c in cases)
    return path
