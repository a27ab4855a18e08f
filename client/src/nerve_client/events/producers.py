"""Which producer may send which event types: one table, checked at every entry point.

| producer      | entry point                                 | may send                       |
|---------------|---------------------------------------------|--------------------------------|
| `site`        | the gateway, with a public site key         | `BEHAVIOURAL` events only      |
| `server`      | the gateway, `Authorization: Bearer <tok>`  | all but outputs and system     |
| `import`      | `nerve import` (history files)              | all but outputs                |
| `crm`         | `nerve_client.NerveClient.publish`          | CRM events                     |
| `training`    | the model registry                          | `model_published`              |
| `nerve`       | `nerve forget`                              | `user_forgotten`               |
| `recommender` | the recommender service                     | `recommendations_updated`      |
| `signals`     | the signals service                         | `interest_signal`              |
| `anomalies`   | the anomalies service                       | `anomaly_detected`             |

A public site key is in every visitor's browser, so anyone holds it. It may therefore send only
what a visitor's own behaviour says (views, searches, simulator runs, cart, ratings, what was
shown, clicked or dismissed, and `user_identified`), and three more rules hold for it:

* an event that names a `user_id` is accepted only when the request proved that very user with
  a signed identity token (`nerve_client.identity`); the gateway verifies the token and passes the
  proven user id here as `identified`;
* transactional and consent-of-record facts — `item_purchased` (what a customer holds),
  `consent_updated`, CRM events — are never accepted from it, token or not: they come from
  server-side producers (`server`, a broker credential, `nerve import`);
* a `context.consent` that grants marketing is accepted only on an event that is
  identity-proven: it names a `user_id` and the request carried a valid identity token for
  exactly that user (`identified`). The grant is then the signed-in customer's own choice on
  the site's banner, on a request the site's backend vouched for (it minted the token), and it
  is what lets the signals service (`engine.signals`, which reads `context.consent`) tell a CRM
  about that customer. An anonymous grant is refused as before: nobody could be called on it,
  and anyone holding the key could otherwise mark any visitor as reachable. A browser may
  always send `context.consent` that grants analytics or personalization, or withdraws
  marketing: neither widens what Nerve may do.

An unknown `type` is refused before validation (`admit`) with the types this producer may send
(not the whole catalogue: a site key is not told about types it may never send) and, when the
name looks like one of them — a typo, or a Segment-style name such as `Product Viewed` — a
"did you mean" hint.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime
from typing import Any

from nerve_client.errors import EventRejected, FieldError
from nerve_client.events.envelope import (
    CRM_TYPES,
    LATEST,
    OUTPUT_TYPES,
    SYSTEM_TYPES,
    Envelope,
    event_types,
    parse_event,
    type_error,
)

BEHAVIOURAL = frozenset(
    {
        "page_viewed",
        "item_viewed",
        "search_performed",
        "simulator_used",
        "item_added_to_cart",
        "item_rated",
        "recommendation_shown",
        "recommendation_clicked",
        "offer_dismissed",
        "user_identified",
    }
)
"""What a browser's own behaviour says: the only types a public site key may send."""

PRODUCERS: dict[str, frozenset[str]] = {
    "site": BEHAVIOURAL,
    "server": frozenset(event_types()) - OUTPUT_TYPES - SYSTEM_TYPES,
    "import": frozenset(event_types()) - OUTPUT_TYPES,
    "crm": CRM_TYPES,
    "training": frozenset({"model_published"}),
    "nerve": frozenset({"user_forgotten"}),
    "recommender": frozenset({"recommendations_updated"}),
    "signals": frozenset({"interest_signal"}),
    "anomalies": frozenset({"anomaly_detected"}),
}

_NAMES = {"site": "a site key", "crm": "a CRM client", "server": "a server-side producer"}
SERVER_SIDE = "send it from a server-side producer (Authorization: Bearer, or a broker credential)"


SEGMENT_NAMES = {
    "products_searched": "search_performed",
    "product_searched": "search_performed",
    "product_added": "item_added_to_cart",
    "product_reviewed": "item_rated",
    "order_completed": "item_purchased",
    "identify": "user_identified",
    "signed_in": "user_identified",
    "page": "page_viewed",
}
"""Names of the Segment / Snowplow e-commerce specs whose Nerve type is not a near spelling."""


def may_send(producer: str, event_type: str) -> bool:
    return event_type in PRODUCERS[producer]


def did_you_mean(name: str, allowed: frozenset[str]) -> str | None:
    """The type of `allowed` that `name` most likely meant: `Product Viewed` -> item_viewed,
    `item_viewd` -> item_viewed, `com.shop.Product Viewed` too (a CloudEvents reverse-DNS
    prefix is not part of the name); None when nothing is close."""
    name = name.rsplit(".", 1)[-1]
    snake = re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower())
    snake = snake.strip("_")
    guess = SEGMENT_NAMES.get(snake)
    if guess in allowed:
        return guess
    itemised = re.sub(r"\bproducts?(?=_|$)", "item", snake)
    for candidate in (snake, itemised):
        close = difflib.get_close_matches(candidate, sorted(allowed), n=1, cutoff=0.75)
        if close:
            return close[0]
    return None


def unknown_type(producer: str, data: Any) -> FieldError | None:
    """The error for an event whose `type` is in no catalogue, naming only what `producer` may
    send (with a hint); None for a known type (or no object: `parse_event` says why)."""
    etype = data.get("type") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (isinstance(etype, str) and etype in LATEST):
        return None
    allowed = PRODUCERS[producer]
    error = type_error(etype, allowed)
    if not isinstance(etype, str):
        return error
    reason = error.reason
    hint = did_you_mean(etype, allowed)
    other = did_you_mean(etype, frozenset(LATEST)) if hint is None else None
    if hint is not None:
        reason += f"; did you mean {hint}?"
    elif other is not None:
        who = _NAMES.get(producer, producer)
        reason += f"; Nerve calls it {other}, which {who} may not send"
    return FieldError("type", reason)


def admit(
    producer: str,
    data: Any,
    *,
    now: datetime | None = None,
    identified: str | None = None,
    token_problem: str | None = None,
) -> Envelope:
    """One decoded event from `producer`, validated (`parse_event`) and checked
    (`check_producer`); `EventRejected` naming each field otherwise. An unknown type is
    answered with what this producer may send, not with the whole catalogue."""
    problem = unknown_type(producer, data)
    if problem is not None:
        raise EventRejected([problem])
    etype = data.get("type") if isinstance(data, dict) else None
    if isinstance(etype, str) and not may_send(producer, etype):  # before its fields: moot
        raise EventRejected([_not_from(producer, etype)])
    event = parse_event(data, now=now)
    return check_producer(producer, event, identified=identified, token_problem=token_problem)


def check_producer(
    producer: str,
    event: Envelope,
    *,
    identified: str | None = None,
    token_problem: str | None = None,
) -> Envelope:
    """`event` if `producer` may send it, else `EventRejected` naming the field.

    `identified` is the user id a site-key request proved with an identity token (None: no
    valid token; `token_problem` then says what was wrong with the one it sent); it matters
    only for `site`, where an event naming any other `user_id` is refused."""
    if not may_send(producer, event.type):
        raise EventRejected([_not_from(producer, event.type)])
    if producer == "site":
        _check_site(event, identified, token_problem)
    return event


def _not_from(producer: str, event_type: str) -> FieldError:
    """The `type` error of a known type `producer` may not send."""
    if producer in ("import", "server") and event_type in OUTPUT_TYPES:
        return FieldError("type", f"{event_type} is produced by Nerve itself")
    reason = f"{event_type} is not accepted from {_NAMES.get(producer, producer)}"
    if producer == "site" and event_type in PRODUCERS["server"]:
        reason += f": {SERVER_SIDE}"
    return FieldError("type", reason)


def _check_site(event: Envelope, identified: str | None, token_problem: str | None) -> None:
    errors = []
    if event.user_id is not None and event.user_id != identified:
        if identified is None:
            reason = "an event naming a user_id needs a valid identity token for that user"
            if token_problem:
                reason += f"; the one sent was refused: {token_problem}"
        else:
            reason = "the identity token is for another user"
        errors.append(FieldError("user_id", reason + " (X-Nerve-Identity or ?identity=)"))
    consent = event.context.consent if event.context is not None else None
    proven = event.user_id is not None and event.user_id == identified
    if consent is not None and consent.marketing and not proven:
        reason = (
            "a site key may grant marketing only on an event naming a user_id proven by an"
            f" identity token; for an anonymous visitor {SERVER_SIDE}"
        )
        errors.append(FieldError("context.consent.marketing", reason))
    if errors:
        raise EventRejected(errors)
