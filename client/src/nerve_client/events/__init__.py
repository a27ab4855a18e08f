"""Wire formats: the event envelope, the per-type catalog and the dead-letter record."""

from nerve_client.events.deadletter import DeadLetter
from nerve_client.events.envelope import (
    CRM_TYPES,
    LATEST,
    MODELS,
    OUTPUT_TYPES,
    SYSTEM_TYPES,
    Consent,
    Context,
    Envelope,
    event_types,
    json_schema,
    parse_event,
    parse_event_json,
)

__all__ = [
    "CRM_TYPES",
    "LATEST",
    "MODELS",
    "OUTPUT_TYPES",
    "SYSTEM_TYPES",
    "Consent",
    "Context",
    "DeadLetter",
    "Envelope",
    "event_types",
    "json_schema",
    "parse_event",
    "parse_event_json",
]
