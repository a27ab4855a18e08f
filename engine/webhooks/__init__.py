"""Webhooks: interest signals POSTed to outside HTTP receivers (CRMs that do not speak NATS).

* `subscriptions` — who receives what: the subscription records in the `webhooks` KV bucket
  (`nerve webhooks add|list|remove`);
* `signing` — the `Nerve-Signature` header (HMAC-SHA256, Stripe-style) and its verification;
* `feeds` — what a subscription can receive (interest signals today; the hook for anomalies);
* `delivery` — one POST, the retry schedule, and what a failed attempt leads to.

The service that runs them is `engine.services.webhooks` (`nerve run webhooks`).
"""

from engine.webhooks.delivery import DeliveryOptions, backoff
from engine.webhooks.feeds import FEEDS, Feed
from engine.webhooks.signing import SIGNATURE_HEADER, sign, verify
from engine.webhooks.subscriptions import Subscription, WebhookStore

__all__ = [
    "FEEDS",
    "SIGNATURE_HEADER",
    "DeliveryOptions",
    "Feed",
    "Subscription",
    "WebhookStore",
    "backoff",
    "sign",
    "verify",
]
