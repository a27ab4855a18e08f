"""Commands that run services: up, run, demo.

Site keys are public (`--site-keys`); the identity secret of each, with which its site's backend
signs identity tokens (`nerve_client.identity`), is private and comes separately: `--site-secrets` /
`NERVE_SITE_SECRETS` as `KEY=SECRET,...` (prefer the variable: a flag shows in `ps`). A key
without a secret serves anonymous visitors only. `nerve demo` generates its site key and secret
on first start into `<data dir>/demo/site.json` (mode 0600) and plays that site's backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from engine.bus import Bus
from engine.cli.app import app
from engine.cli.gatewayopts import check_port, demo_ops_token, demo_site_key, gateway_settings
from engine.cli.toolkit import (
    SlotsFile,
    broker,
    config_error,
    default,
    exit_on_signal,
    first_error,
    out,
    progress,
    with_broker,
    with_bus,
)
from engine.settings import (
    GatewaySettings,
    RecommenderOptions,
    ServiceSettings,
    SiteKey,
)
from nerve_client.errors import ConfigError

Host = Annotated[str, typer.Option(envvar="NERVE_HOST", show_envvar=True)]
Port = Annotated[int, typer.Option(envvar="NERVE_PORT", show_envvar=True)]
SiteKeys = Annotated[
    str,
    typer.Option(
        "--site-keys",
        envvar="NERVE_SITE_KEYS",
        show_envvar=True,
        help="Comma-separated public site keys, each optionally with its allowed origins: "
        "KEY@https://shop.example|https://www.shop.example (default: any origin).",
    ),
]
SiteSecrets = Annotated[
    str,
    typer.Option(
        "--site-secrets",
        envvar="NERVE_SITE_SECRETS",
        show_envvar=True,
        help="Comma-separated KEY=SECRET: the identity secret (>= 16 chars) each site's backend "
        "signs identity tokens with; a key without one accepts anonymous visitors only. "
        "Prefer the environment variable (a flag shows in ps).",
    ),
]
DemoSite = Annotated[
    str,
    typer.Option(
        "--demo-site",
        envvar="NERVE_DEMO_SITE",
        show_envvar=True,
        help="Serve the demo bank's backend (/demo-site/: its site key and a sign-in that mints "
        "identity tokens) for this site key, which needs a secret. For demos and tests only.",
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
CrmKeys = Annotated[
    str,
    typer.Option(
        "--crm-keys",
        envvar="NERVE_CRM_KEYS",
        show_envvar=True,
        help="Comma-separated bearer keys of CRM backends for POST /v1/crm/events (>= 16 "
        "characters, distinct from site keys and internal tokens). Prefer the variable.",
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


GcTuning = Annotated[
    bool,
    typer.Option(
        "--gc-tuning/--no-gc-tuning",
        envvar="NERVE_GC_TUNING",
        show_envvar=True,
        help="Quieter garbage collection in the service process (off: Python's defaults, "
        "to measure the difference).",
    ),
]
GC_TUNING: bool = default(ServiceSettings, "gc_tuning")
Replicas = Annotated[
    int,
    typer.Option(
        min=1,
        max=64,
        help="Recommender and signals: how many replicas you start. Any number may run (they "
        "share the partitions through leases); this only makes each claim its 1/N share at "
        "once instead of one replica taking every partition until the others join. "
        "Anomalies: the fixed split (with --replica).",
    ),
]
Replica = Annotated[
    int,
    typer.Option(
        min=0,
        help="Anomalies: which replica this is (0 .. replicas-1). Ignored by the recommender "
        "and signals (partitions are leased, not assigned).",
    ),
]
# Defaults of the options above, written once in the settings models.
HOST: str = default(GatewaySettings, "host")
PORT: int = default(GatewaySettings, "port")
RATE_LIMIT = float(default(SiteKey, "rate_per_s"))
BURST: int = default(SiteKey, "burst")
ACK_WAIT: float = default(ServiceSettings, "ack_wait_s")
REPLICAS: int = default(RecommenderOptions, "replicas")
REPLICA: int = default(RecommenderOptions, "replica")


def _reco(config: Path | None, replicas: int, replica: int) -> RecommenderOptions:
    try:
        return RecommenderOptions(config=config, replicas=replicas, replica=replica)
    except ValueError as exc:
        raise config_error(exc) from None


@app.command()
def up(
    host: Host = HOST,
    port: Port = PORT,
    site_keys: SiteKeys = "",
    site_secrets: SiteSecrets = "",
    demo_site: DemoSite = "",
    internal_tokens: InternalTokens = "",
    crm_keys: CrmKeys = "",
    rate_limit: RateLimit = RATE_LIMIT,
    burst: Burst = BURST,
    ack_wait: AckWait = ACK_WAIT,
    import_file: Annotated[
        Path | None,
        typer.Option("--import", help="Import this JSON Lines history first (idempotent)."),
    ] = None,
    config: SlotsFile = None,
    replicas: Replicas = REPLICAS,
    replica: Replica = REPLICA,
    services: Annotated[
        str,
        typer.Option(
            help="Comma-separated services to run in this process (e.g. all but the "
            "recommender, run with `nerve run recommender` in another process for a core of "
            "its own)."
        ),
    ] = "gateway,profiles,warehouse,recommender,signals,anomalies,ops,webhooks",
    gc_tuning: GcTuning = GC_TUNING,
) -> None:
    """Run the engine: provision, then every service (gateway, profiles, warehouse,
    recommender) in this process, each an asyncio task, until Ctrl-C."""
    from engine.runner import SERVICES

    names = tuple(n.strip() for n in services.split(",") if n.strip())
    unknown = sorted(set(names) - set(SERVICES))
    if unknown or not names:
        raise ConfigError(f"--services: unknown {unknown or 'none'}; from {', '.join(SERVICES)}")
    gateway = gateway_settings(
        host,
        port,
        site_keys,
        internal_tokens,
        rate_limit,
        burst,
        site_secrets,
        demo_site,
        crm_keys=crm_keys,
    )
    reco = _reco(config, replicas, replica)
    if "gateway" in names:
        check_port(host, port)
    _serve(names, gateway, reco, _services(ack_wait_s=ack_wait, gc_tuning=gc_tuning), import_file)


def _services(**values: object) -> ServiceSettings:
    try:
        return ServiceSettings.model_validate(values)
    except ValueError as exc:  # the option is --ack-wait, the field ack_wait_s
        raise ConfigError(first_error(exc).replace("--ack-wait-s", "--ack-wait")) from None


def _serve(
    names: tuple[str, ...],
    gateway: GatewaySettings | None,
    reco: RecommenderOptions,
    services: ServiceSettings,
    import_path: Path | None = None,
) -> None:
    """Run `names` in this process on the broker of the global options, until a signal."""
    from engine.runner import run_services

    settings = broker()

    async def work(url: str) -> int:
        return await run_services(
            url,
            names,
            settings,
            gateway=gateway,
            import_path=import_path,
            console=out,
            recommender=reco,
            services=services,
        )

    exit_on_signal(with_broker(work))


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=1, help="Users in the generated history.")] = 3000,
    days: Annotated[int, typer.Option(min=1, help="Days of generated history.")] = 60,
    host: Host = HOST,
    port: Port = PORT,
    gc_tuning: GcTuning = GC_TUNING,
) -> None:
    """The demo: generate a history once, import it with its catalogue, train and publish a
    model per slot (once), and run every service until Ctrl-C."""
    import importlib.metadata

    from engine.runner import SERVICES, run_services
    from engine.synth import generate as run

    check_port(host, port)  # before minutes of generating, importing and training
    settings = broker()
    history = settings.data_dir / "demo" / "history.jsonl"
    if not history.exists():
        with progress("users") as bar:
            task = bar.add_task("generate demo history", total=users)
            summary = run(
                history, users=users, days=days, seed=42, progress=lambda n: bar.advance(task, n)
            )
        out.print(f"generated {summary.events:,} events of {users:,} users -> {history}")
    site = demo_site_key(settings.data_dir)
    token = demo_ops_token(settings.data_dir)
    gateway = GatewaySettings(
        host=host, port=port, site_keys=(site,), demo_site=site.key, internal_tokens=(token,)
    )

    async def prepare(bus: Bus) -> None:
        from engine.importer import import_file
        from engine.recommender.catalog import load_lines

        await bus.provision()
        summary = await import_file(history, bus.publisher, await bus.kv("imports"))
        state = "already imported" if summary.already_complete else "imported"
        out.print(f"{history.name}: {state}, {summary.accepted:,} events in the log")
        items, _ = await load_lines(history.with_name(history.stem + ".catalog.jsonl"), bus)
        out.print(f"catalogue: {items} items")

    with_bus("nerve-demo", prepare)
    for entry in importlib.metadata.entry_points(group="nerve.demo"):
        entry.load()(settings)  # training: a model per slot, unless one is active

    async def work(url: str) -> int:
        return await run_services(
            url,
            tuple(SERVICES),
            settings,
            gateway=gateway,
            console=out,
            visitors=users,
            services=ServiceSettings(gc_tuning=gc_tuning),
        )

    out.print(
        f"Open http://{host}:{port}/demo/ : accept the banner, run the loan simulator twice "
        "and watch the home page's offers.",
        highlight=False,
    )
    out.print(
        f"Operator console: http://{host}:{port}/ops (token {token}, also in "
        f"{settings.data_dir / 'demo' / 'ops-token'}); metrics: http://{host}:{port}/metrics",
        highlight=False,
    )
    out.print(
        "Or:  curl -s -X POST http://{h}:{p}/v1/events -H 'X-Nerve-Site-Key: {k}' "
        '-H \'Content-Type: application/json\' -d \'{{"type":"page_viewed","time":'
        '"{t}","anonymous_id":"visitor-1"}}\''.format(
            h=host, p=port, k=site.key, t=datetime.now(UTC).isoformat(timespec="seconds")
        ),
        highlight=False,
    )
    exit_on_signal(with_broker(work))


@app.command()
def run(
    service: Annotated[
        str,
        typer.Argument(
            help="profiles | warehouse | gateway | recommender | signals | anomalies | ops | "
            "webhooks"
        ),
    ],
    host: Host = HOST,
    port: Port = PORT,
    site_keys: SiteKeys = "",
    site_secrets: SiteSecrets = "",
    demo_site: DemoSite = "",
    internal_tokens: InternalTokens = "",
    crm_keys: CrmKeys = "",
    rate_limit: RateLimit = RATE_LIMIT,
    burst: Burst = BURST,
    ack_wait: AckWait = ACK_WAIT,
    flush_events: Annotated[
        int,
        typer.Option(min=1, help="Warehouse: events per Parquet chunk (or every 5 s)."),
    ] = default(ServiceSettings, "flush_events"),
    config: SlotsFile = None,
    replicas: Replicas = REPLICAS,
    replica: Replica = REPLICA,
    gc_tuning: GcTuning = GC_TUNING,
) -> None:
    """Run one service until Ctrl-C. Replicas: start several profiles services (they share
    the work), or any number of recommenders (they lease the partitions of the users; a
    replica that dies hands its partitions over after the lease time, `nerve init --lease-s`)."""
    reco = _reco(config, replicas, replica)
    from engine.runner import SERVICES

    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    gateway = None
    if service == "gateway":
        gateway = gateway_settings(
            host,
            port,
            site_keys,
            internal_tokens,
            rate_limit,
            burst,
            site_secrets,
            demo_site,
            crm_keys=crm_keys,
        )
        check_port(host, port)
    services = _services(ack_wait_s=ack_wait, flush_events=flush_events, gc_tuning=gc_tuning)
    _serve((service,), gateway, reco, services)
