"""The only package that talks to NATS: connect, provision, publish."""

from engine.bus.connection import ConnectionState, connect
from engine.bus.kv import JetStreamKV, KeyValueStore
from engine.bus.provision import BUCKETS, OBJECT_STORES, Report, provision, streams
from engine.bus.publisher import MSG_ID, Outgoing, Publisher

__all__ = [
    "BUCKETS",
    "MSG_ID",
    "OBJECT_STORES",
    "ConnectionState",
    "JetStreamKV",
    "KeyValueStore",
    "Outgoing",
    "Publisher",
    "Report",
    "connect",
    "provision",
    "streams",
]
