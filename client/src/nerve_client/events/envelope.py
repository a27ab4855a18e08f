"""The event envelope: one pydantic model per (type, schema_version), built from the catalog.

An event on the wire is a JSON object with the fields of `Envelope`; its `properties` are
validated by the catalog model of its `type` and `schema_version`. `parse_event` is the one
entry point that turns untrusted input into an `Envelope` or raises `EventRejected` listing
each bad field with its reason.

Identifiers (`user_id`, `anonymous_id`, `item_id`) refuse control, bidi and invisible
characters (`nerve_client.ids.unsafe_character`), and a UUID among them, or as the event `id`, is
stored in lowercase (`nerve_client.ids.canonical_id`): one UUID is one user whatever its case.
An event's `time` may lie at most a day ahead of `now` and, when the event carries a
`received_at` (the gateway stamps every event it receives), at most `max_age` (default
`MAX_PAST`, 7 days) before it. History without `received_at` (`nerve import`, producers'
own clients) has no lower bound.

`source` is who produced the event: a short name (`web`, `crm`, `import`) or, as CloudEvents
sends it, a URI-reference (`https://shop.example/web`, `/web`); it is stored as sent.
A missing or unknown `type` is refused naming the known types (`type_error`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Union

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.json_schema import DEFAULT_REF_TEMPLATE

from nerve_client.errors import EventRejected, FieldError
from nerve_client.events.catalog import CATALOG, CrmContactLogged, Properties
from nerve_client.ids import canonical_id, unsafe_character
from nerve_client.subjects import (
    SITE_TOKEN,
    SYSTEM_TOKEN,
    activity_subject,
    crm_subject,
    user_token,
)

ID_PATTERN = (
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9A-HJKMNP-TV-Z]{26})$"
)
"""A UUID (UUIDv7 recommended) or a ULID."""
_ID = re.compile(ID_PATTERN)
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
SOURCE_PATTERN = r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]{1,256}$"
"""A short name (`web`) or a URI-reference (RFC 3986 characters: no spaces, no controls)."""
_SOURCE = re.compile(SOURCE_PATTERN)
MAX_FUTURE = timedelta(days=1)
"""An event stamped further ahead than this is refused: a producer's clock is wrong."""
MAX_EVENT_BYTES = 256 * 1024
"""The largest event accepted, as compact JSON. A real event is a few hundred bytes (a
`recommendations_updated` of 100 entries a few tens of KiB); the cap keeps every event well
inside the broker's 1 MiB `max_payload`, so a big one is refused with its reason (4xx at the
gateway) instead of failing at the broker. Checked only for types with open properties
(`page_viewed`'s free annotations): every other field has its own length limit."""
MAX_PAST = timedelta(days=7)
"""How far before its `received_at` an event's `time` may lie. A browser queues events while
offline for minutes or hours, not weeks; anything older arriving live is a replay, a forged
history or a broken clock, and would rewrite profiles and recent-activity windows in the past.
A week leaves room for a device that was offline over a long weekend. Older history goes in
with `nerve import`, which stamps no `received_at`."""
CRM_TYPES = frozenset({CrmContactLogged.type_name})
"""Types that belong in the CRM stream rather than ACTIVITY."""
SYSTEM_TYPES = frozenset(p.type_name for p in CATALOG if p.system)
"""Types about the system, not a user; the gateway does not accept them."""

OUTPUT_TYPES = frozenset(p.type_name for p in CATALOG if p.output)
"""Types Nerve produces itself (`recommendations_updated`); never accepted from producers."""

PropertiesClass = type[Properties]


def _identifier(value: str) -> str:
    reason = unsafe_character(value)
    if reason is not None:
        raise ValueError(reason)
    return canonical_id(value)


UserId = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_identifier)]
"""A user, anonymous or item id: visible characters only; a UUID in lowercase."""


class Consent(BaseModel):
    """Consent flags as the site collected them; absent means unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    analytics: bool | None = None
    personalization: bool | None = None
    marketing: bool | None = None


class Context(BaseModel):
    """Where the event happened. No IP address: Nerve does not need one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    page_url: str | None = Field(default=None, max_length=2000)
    referrer: str | None = Field(default=None, max_length=2000)
    user_agent: str | None = Field(default=None, max_length=512)
    locale: str | None = Field(default=None, max_length=35)
    library: str | None = Field(default=None, max_length=64)
    consent: Consent | None = None
    gpc: bool | None = None
    campaign: dict[str, Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, max_length=20
    )


class Envelope(BaseModel):
    """Fields common to every event. Concrete classes fix `type` and `properties`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="UUIDv7 (or any UUID, or a ULID); also the Nats-Msg-Id")
    type: str
    schema_version: int
    time: AwareDatetime = Field(description="When it happened, RFC 3339; stored in UTC")
    received_at: AwareDatetime | None = Field(default=None, description="Set by the gateway")
    user_id: UserId | None = None
    anonymous_id: UserId | None = None
    session_id: str | None = Field(default=None, max_length=128)
    source: str = Field(
        default="web",
        max_length=256,
        description="Who produced it: a short name (`web`) or a URI-reference (CloudEvents)",
        json_schema_extra={"pattern": SOURCE_PATTERN},
    )
    item_id: UserId | None = None
    properties: Properties
    context: Context | None = None

    properties_model: ClassVar[PropertiesClass]

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be a UUID (UUIDv7 recommended) or a ULID")
        return canonical_id(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not _SOURCE.fullmatch(value):
            raise ValueError("must be a short name or a URI-reference (no spaces or controls)")
        return value

    @field_validator("time", "received_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if isinstance(value, datetime) or value is None:
            return value
        if not isinstance(value, str) or not _RFC3339.match(value):
            raise ValueError("must be an RFC 3339 date-time with a UTC offset")
        return value

    @field_validator("time", "received_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    @property
    def user_token(self) -> str:
        """The token-safe user key of this event's subject (see `nerve_client.subjects`)."""
        if self.properties_model.system:
            return SYSTEM_TOKEN
        if self.properties_model.userless and not (self.user_id or self.anonymous_id):
            return SITE_TOKEN
        return user_token(self.user_id, self.anonymous_id)

    @property
    def subject(self) -> str:
        """The subject this event is stored under: ACTIVITY, or CRM for CRM types."""
        if self.type in CRM_TYPES:
            return crm_subject(self.user_token, self.type)
        return activity_subject(self.user_token, self.type)

    def to_json(self) -> bytes:
        """Compact JSON, `None` fields left out: the bytes that go on the bus."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


def _event_model(props: type[Properties]) -> type[Envelope]:
    name = "".join(p.title() for p in props.type_name.split("_")) + "Event"
    required = any(f.is_required() for f in props.model_fields.values())
    model = create_model(
        name,
        __base__=Envelope,
        __doc__=props.summary,
        type=(Literal[props.type_name], ...),  # type: ignore[arg-type]
        schema_version=(Literal[props.version], props.version),  # type: ignore[arg-type]
        properties=(props, ... if required else Field(default_factory=props)),
    )
    model.properties_model = props
    return model


MODELS: dict[tuple[str, int], type[Envelope]] = {
    (p.type_name, p.version): _event_model(p) for p in CATALOG
}
LATEST: dict[str, int] = {}
for _t, _v in MODELS:
    LATEST[_t] = max(_v, LATEST.get(_t, 0))


def event_types() -> list[str]:
    """Every event type in the catalog, sorted."""
    return sorted(LATEST)


def _field_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(FieldError(field, msg))
    return out


def parse_event(
    data: Any, *, now: datetime | None = None, max_age: timedelta | None = MAX_PAST
) -> Envelope:
    """Validate one decoded JSON value as an event, or raise `EventRejected` naming each field.

    `time` may be at most `MAX_FUTURE` after `now` (default: the clock) and, for an event
    with a `received_at`, at most `max_age` before that (None: no lower bound). An unknown
    type is told the whole catalog: a caller that knows its producer lists what that one may
    send instead (`nerve_client.events.producers.admit`)."""
    if not isinstance(data, dict):
        raise EventRejected([FieldError("", f"an event is a JSON object, not {_kind(data)}")])
    etype = data.get("type")
    if not isinstance(etype, str) or etype not in LATEST:
        raise EventRejected([type_error(etype)])
    version = data.get("schema_version", LATEST[etype])
    model = MODELS.get((etype, version)) if isinstance(version, int) else None
    if model is None:
        known_v = sorted(v for t, v in MODELS if t == etype)
        raise EventRejected(
            [FieldError("schema_version", f"unknown version {version!r} of {etype} ({known_v})")]
        )
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        raise EventRejected(_field_errors(exc)) from None
    errors = []
    system = model.properties_model.system
    if system and (event.user_id is not None or event.anonymous_id is not None):
        errors.append(FieldError("user_id", f"{etype} carries no user id"))
    elif (
        not system
        and not model.properties_model.userless
        and event.user_id is None
        and event.anonymous_id is None
    ):
        errors.append(FieldError("user_id", "user_id or anonymous_id is required"))
    for field in sorted(model.properties_model.requires):
        if getattr(event, field) is None:
            errors.append(FieldError(field, f"required for {etype}"))
    if event.time > (now or datetime.now(UTC)) + MAX_FUTURE:
        hours = int(MAX_FUTURE.total_seconds() // 3600)
        errors.append(FieldError("time", f"more than {hours} h in the future (producer clock?)"))
    if model.properties_model.model_config.get("extra") == "allow":
        size = len(event.to_json())
        if size > MAX_EVENT_BYTES:
            errors.append(FieldError("", f"event of {size} bytes exceeds {MAX_EVENT_BYTES}"))
    received = event.received_at
    if max_age is not None and received is not None and event.time < received - max_age:
        reason = f"more than {_span(max_age)} before received_at (older history: `nerve import`)"
        errors.append(FieldError("time", reason))
    if errors:
        raise EventRejected(errors)
    return event


def parse_event_json(raw: bytes | str) -> Envelope:
    """Decode and validate one JSON event (e.g. a message read back from the bus)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventRejected([FieldError("", f"not valid JSON: {exc}")]) from None
    return parse_event(data)


def _span(delta: timedelta) -> str:
    days, seconds = delta.days, delta.seconds
    return f"{days} days" if days and not seconds else f"{int(delta.total_seconds())} s"


def _kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", dict: "an object", type(None): "null"}
    return kinds.get(type(value), "a number")


def type_error(etype: Any, known: Collection[str] | None = None) -> FieldError:
    """The `type` error of an event whose type is missing, not a string or not in the
    catalog, listing `known` (default: every type)."""
    listed = f"known: {', '.join(sorted(LATEST if known is None else known))}"
    if etype is None:
        return FieldError("type", f"required ({listed})")
    if not isinstance(etype, str):
        return FieldError("type", f"must be a string, not {_kind(etype)} ({listed})")
    shown = repr(etype if len(etype) <= 100 else etype[:100] + "...")
    return FieldError("type", f"unknown event type {shown} ({listed})")


def json_schema(
    event_type: str | None = None,
    *,
    types: Collection[str] | None = None,
    ref_template: str = DEFAULT_REF_TEMPLATE,
) -> dict[str, Any]:
    """JSON Schema of one event type (latest version), or of any event when `None` (of any
    of `types` when given: the gateway documents only what it accepts). `ref_template` is
    pydantic's: where the schema will live decides how its `$ref`s are written."""
    if event_type is not None:
        if event_type not in LATEST:
            raise KeyError(event_type)
        return MODELS[(event_type, LATEST[event_type])].model_json_schema(ref_template=ref_template)
    chosen = sorted(t for t in LATEST if types is None or t in types)
    latest = tuple(MODELS[(t, LATEST[t])] for t in chosen)
    union = Annotated[Union[latest], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    schema = TypeAdapter(union).json_schema(ref_template=ref_template)
    schema["title"] = "Nerve event"
    return schema
