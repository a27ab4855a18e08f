"""The only package that talks to NATS: `Bus` is the door; the modules beside it do the work."""

from engine.bus.bus import Bus, Conflict, NoAnswer, Subscription
from engine.bus.connection import AuthRefused, ConnectionState, accepts, connect
from engine.bus.decode import Record, Refusal, decode
from engine.bus.kv import JetStreamKV, KeyValueStore
from engine.bus.pipeline import MSG_ID, Ack, Conditional
from engine.bus.provision import BUCKETS, OBJECT_STORES, Report, provision, streams
from engine.bus.publisher import Outgoing, Publisher

__all__ = [
    "BUCKETS",
    "MSG_ID",
    "OBJECT_STORES",
    "Ack",
    "AuthRefused",
    "Bus",
    "Conditional",
    "Conflict",
    "ConnectionState",
    "JetStreamKV",
    "KeyValueStore",
    "NoAnswer",
    "Outgoing",
    "Publisher",
    "Record",
    "Refusal",
    "Report",
    "Subscription",
    "accepts",
    "connect",
    "decode",
    "provision",
    "streams",
]
