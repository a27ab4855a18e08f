"""The `nerve` Typer app and its global options (the pieces commands use: `toolkit`)."""

from __future__ import annotations

import typer

from engine.cli.toolkit import (
    ConnectTimeout,
    DataDir,
    NatsCreds,
    NatsServer,
    NatsTlsCa,
    NatsTlsCert,
    NatsTlsKey,
    NatsUrl,
    SyncInterval,
    config_error,
    default,
    use_broker,
)
from engine.settings import BrokerSettings

app = typer.Typer(
    name="nerve",
    help=(
        "Nerve: a personalization and next-best-offer engine on a NATS JetStream log.\n\n"
        "Without --nats-url every command starts (or reuses) an embedded nats-server whose "
        "store lives in the data dir; it takes no anonymous connections (see `nerve credentials`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def global_options(
    nats_url: NatsUrl = None,
    data_dir: DataDir = default(BrokerSettings, "data_dir"),
    nats_server: NatsServer = None,
    sync_interval: SyncInterval = default(BrokerSettings, "sync_interval"),
    connect_timeout: ConnectTimeout = default(BrokerSettings, "connect_timeout"),
    nats_creds: NatsCreds = None,
    nats_tls_ca: NatsTlsCa = None,
    nats_tls_cert: NatsTlsCert = None,
    nats_tls_key: NatsTlsKey = None,
) -> None:
    """Options shared by every command (give them before the command's name)."""
    try:
        settings = BrokerSettings(
            nats_url=nats_url,
            data_dir=data_dir,
            server_binary=nats_server,
            sync_interval=sync_interval,
            connect_timeout=connect_timeout,
            nats_creds=nats_creds,
            nats_tls_ca=nats_tls_ca,
            nats_tls_cert=nats_tls_cert,
            nats_tls_key=nats_tls_key,
        )
    except ValueError as exc:
        raise config_error(exc) from None
    use_broker(settings)
