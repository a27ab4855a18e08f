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

`generate` (`history`) writes the events in time order as JSON Lines, and beside them
`<stem>.catalog.jsonl` (one item per line) and `<stem>.truth.csv` (user, segment, credit
intent, top three categories by planted weight). `visitors` publishes a live trickle drawn
from the same catalogue (what `nerve demo` runs). The parameters live in `model`.
"""

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
