"""Nerve's exceptions: one root, a few subclasses that carry the fields a caller needs.

NerveError
├── ConfigError            a setting or flag is wrong (the CLI exits 2)
├── BrokerError            the broker cannot be started, reached or used
│   ├── BrokerUnavailable  no server answered at `url` within the retry budget
│   ├── NoAnswer           a core request on `subject` got no reply
│   └── PublishError       the broker did not acknowledge a publish within its budget
│       └── BrokerDown     ... because the client is not connected (or its buffer is full)
├── Conflict               a conditional publish lost its race (`subject` moved past `expected`)
├── ProvisionError         a stream / bucket exists with a config we cannot change
└── EventRejected          an input failed validation: `errors` lists (field, reason)

Every `BrokerError` raised while serving HTTP is a temporary condition of the broker, not a
fault of the request: the gateway answers it with 503 and `Retry-After` (`engine.gateway.app`).
"""

from __future__ import annotations

from dataclasses import dataclass


class NerveError(Exception):
    """Root of every error Nerve raises on purpose."""


class ConfigError(NerveError):
    """A setting, flag or configuration file is invalid."""


class BrokerError(NerveError):
    """The NATS server could not be started or used."""


class BrokerUnavailable(BrokerError):
    """No NATS server answered at `url`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach NATS at {url}: {reason}")
        self.url = url
        self.reason = reason


class NoAnswer(BrokerError):
    """A core request got no reply (nobody listening, or not in time)."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"no answer on {subject}: {reason}")
        self.subject = subject
        self.reason = reason


class Conflict(NerveError):
    """A conditional publish lost its race: `subject` had moved past `expected`."""

    def __init__(self, subject: str, expected: int) -> None:
        super().__init__(f"{subject} is no longer at sequence {expected}")
        self.subject = subject
        self.expected = expected


class ProvisionError(NerveError):
    """A stream, bucket or object store exists with a config that cannot be changed in place."""

    def __init__(self, name: str, field: str, have: object, want: object) -> None:
        super().__init__(
            f"{name}: cannot change {field} from {have!r} to {want!r} in place "
            "(the server refuses it; recreate the stream or keep the old value)"
        )
        self.name = name
        self.field = field
        self.have = have
        self.want = want


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an input was refused: the dotted path of the field and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class EventRejected(NerveError):
    """An event failed validation; `errors` says which fields and why."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class PublishError(BrokerError):
    """The broker did not acknowledge a publish (timeout, no stream, server error).

    A message whose publish failed may still have been stored (its ack may be what was lost):
    re-send it with the same message id and the stream keeps one copy."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"publish to {subject} failed: {reason}")
        self.subject = subject
        self.reason = reason


class BrokerDown(PublishError):
    """A publish was not sent at all, or lost with its connection: the client is not connected
    to the broker (reconnecting, closed, its outbound buffer full) or the server is gone."""
