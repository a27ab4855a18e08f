"""Which producer may send which event types: one table, checked at every entry point.

| producer      | entry point                                 | may send                       |
|---------------|---------------------------------------------|--------------------------------|
| `site`        | the gateway, with a public site key         | `BEHAVIOURAL` events only      |
| `server`      | the gateway, `Authorization: Bearer <tok>`  | all but outputs and system     |
| `import`      | `nerve import` (history files)              | all but outputs                |
| `crm`         | `engine.client.NerveClient.publish`         | CRM events                     |
| `training`    | the model registry                          | `model_published`              |
| `nerve`       | `nerve forget`                              | `user_forgotten`               |
| `recommender` | the recommender service                     | `recommendations_updated`      |
| `signals`     | the signals service                         | `interest_signal`              |

A public site key is in every visitor's browser, so anyone holds it. It may therefore send only
what a visitor's own behaviour says (views, searches, simulator runs, cart, ratings, what was
shown, clicked or dismissed, and `user_identified`), and two more rules hold for it:

* an event that names a `user_id` is accepted only when the request proved that very user with
  a signed identity token (`engine.identity`); the gateway verifies the token and passes the
  proven user id here as `identified`;
* transactional and consent-of-record facts — `item_purchased` (what a customer holds),
  `consent_updated`, CRM events — and a `context.consent` that grants marketing are never
  accepted from it, token or not: they come from server-side producers (`server`, a broker
  credential, `nerve import`). A browser may still send `context.consent` that grants
  analytics or personalization, or withdraws marketing: neither widens what Nerve may do.
"""

from __future__ import annotations

from engine.errors import EventRejected, FieldError
from engine.events.envelope import CRM_TYPES, OUTPUT_TYPES, SYSTEM_TYPES, Envelope, event_types

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
}

_NAMES = {"site": "a site key", "crm": "a CRM client", "server": "a server-side producer"}
SERVER_SIDE = "send it from a server-side producer (Authorization: Bearer, or a broker credential)"


def may_send(producer: str, event_type: str) -> bool:
    return event_type in PRODUCERS[producer]


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
        if producer in ("import", "server") and event.type in OUTPUT_TYPES:
            reason = f"{event.type} is produced by Nerve itself"
        else:
            reason = f"{event.type} is not accepted from {_NAMES.get(producer, producer)}"
            if producer == "site" and event.type in PRODUCERS["server"]:
                reason += f": {SERVER_SIDE}"
        raise EventRejected([FieldError("type", reason)])
    if producer == "site":
        _check_site(event, identified, token_problem)
    return event


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
    if consent is not None and consent.marketing:
        errors.append(
            FieldError("context.consent.marketing", f"marketing consent of record: {SERVER_SIDE}")
        )
    if errors:
        raise EventRejected(errors)
