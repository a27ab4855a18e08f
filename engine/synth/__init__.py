"""A synthetic history of a bank's website, with a documented generative model.

The point is not realism for its own sake but a history whose structure is known, so a trained
model can be checked against what was planted.

The generative model (all randomness from one seed):

1. **Catalogue.** `CATALOGUE` lists the products: accounts, savings, cards, loans, mortgages,
   funds, pensions and insurance, each with a category, a base value (what an acquisition is
   worth to the bank, EUR) and a popularity weight.
2. **Segments.** Each user belongs to one of `SEGMENTS` (drawn by its share). A segment has an
   affinity for each category, a visit rate (sessions per week) and a probability of having a
   *credit intent* (wanting a loan or mortgage during the window).
3. **Personal taste.** A user's weight for item *i* is
   `popularity[i] × affinity[segment, category(i)] × taste[user, category(i)]`, with
   `taste ~ Gamma(2, 1/2)` per category (mean 1): users of a segment agree on the broad shape
   and differ in detail. Credit-intent users multiply their weight for their intended credit
   category (`loans` or `mortgages`) by 6.
4. **Sessions.** The number of sessions is Poisson(visit rate × weeks); each starts at a uniform
   day and an hour drawn from a daytime-heavy profile. The first session starts anonymous and
   becomes identified by a `user_identified` event (login) after its first page view; the
   first session also records consent (90 % personalization, 55 % marketing).
5. **Within a session:** a `page_viewed` of the home page, then 1 + Poisson(1.5) item views drawn
   from the user's weights (each preceded by a category `page_viewed` 30 % of the time), a
   `search_performed` with probability 0.15. Viewing a loan or mortgage product runs its
   simulator with probability 0.5 (0.8 with credit intent); amounts and terms depend on the
   segment.
6. **Acquisitions.** A credit product is applied for (`item_added_to_cart`, then
   `item_purchased`) only after a simulator run for it in this or an earlier session: with
   probability 0.35 per session for intent users, 0.02 otherwise. Other products are bought
   with a per-view probability by category (`BUY_RATE`), once per user. Purchase values are
   the base value × LogNormal(0, 0.3).
7. **Planted anomalies** (only with `anomalies` > 0, `nerve generate --anomalies RATE`; see
   `engine.synth.anomalies` for each kind's parameters): every user's events carry one home
   `context` (locale, user agent); then, on disjoint sets of RATE × users users each, a
   **rate burst** (40-80 events of one type in 60-90 s), an **unusual value** (a simulation or
   purchase 6-8 robust standard deviations of log amount above its segment's median) and a
   **new context** (a login from a locale and browser/OS never used, then a simulation of
   10,000 EUR or more and a purchase); and on distinct days a **site-wide rate shift** (20-30
   minutes of anonymous bot traffic of one type at 10 × its usual rate and at least
   2 × the site's total rate). These draw from
   generators of their own: the clean events (ids included) are the same whatever the rate,
   and at rate 0 the file is the clean history byte for byte.

`generate` (`history`) writes the events in time order as JSON Lines, and beside them
`<stem>.catalog.jsonl` (one item per line), `<stem>.truth.csv` (user, segment, credit
intent, top three categories by planted weight) and, with anomalies, `<stem>.anomalies.jsonl`
(one planted case per line: kind, user or `"site"`, start and end, the planted event ids, the
deciding event). `visitors` publishes a live trickle drawn from the same catalogue (what
`nerve demo` runs), planting a rate burst or an unusual amount now and then if asked
(`anomaly_every`). The parameters live in `model` and `anomalies`.
"""

from engine.synth.anomalies import KINDS as ANOMALY_KINDS
from engine.synth.history import GenerateSummary, generate
from engine.synth.model import (
    BUY_RATE,
    CATALOGUE,
    CATEGORIES,
    CREDIT,
    SEGMENTS,
    SIMULATOR_OF,
    Product,
    Segment,
)
from engine.synth.visitors import visitors

__all__ = [
    "ANOMALY_KINDS",
    "BUY_RATE",
    "CATALOGUE",
    "CATEGORIES",
    "CREDIT",
    "SEGMENTS",
    "SIMULATOR_OF",
    "GenerateSummary",
    "Product",
    "Segment",
    "generate",
    "visitors",
]
