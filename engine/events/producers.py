"""Which producer may send which event types: one table, checked at every entry point.

| producer      | entry point                          | may send                          |
|---------------|--------------------------------------|-----------------------------------|
| `site`        | the gateway, with a public site key  | user activity (no CRM, no output) |
| `import`      | `nerve import` (history files)       | every type Nerve does not output  |
| `crm`         | `engine.client.NerveClient.publish`  | CRM events                        |
| `training`    | the model registry                   | `model_published`                 |
| `nerve`       | `nerve forget`                       | `user_forgotten`                  |
| `recommender` | the recommender service              | `recommendations_updated`         |
| `signals`     | the signals service                  | `interest_signal`                 |
"""

from __future__ import annotations

from engine.errors import EventRejected, FieldError
from engine.events.envelope import CRM_TYPES, OUTPUT_TYPES, SYSTEM_TYPES, Envelope, event_types

_ACTIVITY = frozenset(event_types()) - CRM_TYPES - SYSTEM_TYPES - OUTPUT_TYPES

PRODUCERS: dict[str, frozenset[str]] = {
    "site": _ACTIVITY,
    "import": frozenset(event_types()) - OUTPUT_TYPES,
    "crm": CRM_TYPES,
    "training": frozenset({"model_published"}),
    "nerve": frozenset({"user_forgotten"}),
    "recommender": frozenset({"recommendations_updated"}),
    "signals": frozenset({"interest_signal"}),
}

_NAMES = {"site": "a site key", "crm": "a CRM client"}


def may_send(producer: str, event_type: str) -> bool:
    return event_type in PRODUCERS[producer]


def check_producer(producer: str, event: Envelope) -> Envelope:
    """`event` if `producer` may send its type, else `EventRejected` naming the field."""
    if not may_send(producer, event.type):
        if producer == "import" and event.type in OUTPUT_TYPES:
            reason = f"{event.type} is produced by Nerve itself"
        else:
            reason = f"{event.type} is not accepted from {_NAMES.get(producer, producer)}"
        raise EventRejected([FieldError("type", reason)])
    return event
