"""`nerve cluster up`: a JetStream cluster of nats-servers on loopback ports, for development."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from engine.cli.app import app
from engine.cli.toolkit import broker, out
from engine.cluster import MAX_NODES, Cluster
from engine.credstore import path_of
from nerve_client.errors import ConfigError

cluster_app = typer.Typer(
    help="A local JetStream cluster (development, tests): up --nodes 3.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")

Nodes = Annotated[
    int,
    typer.Option(min=1, max=MAX_NODES, help="How many nats-servers (3 tolerates one down)."),
]


@cluster_app.command("up")
def up(nodes: Nodes = 3) -> None:
    """Start NODES nats-servers with JetStream, routed to each other, on free loopback ports,
    with the data dir's credentials (the embedded broker's); print the URLs to give as
    --nats-url, and run until Ctrl-C. Each node keeps its store under <data dir>/nodes/."""
    settings = broker()
    if settings.nats_url:
        raise ConfigError("--nats-url: nerve cluster up starts its own servers; leave it out")
    cluster = Cluster(
        settings.data_dir,
        nodes,
        server_binary=settings.server_binary,
        sync_interval=settings.sync_interval,
    )
    cluster.start()
    try:
        _show(cluster)
        _watch(cluster)
    finally:
        cluster.stop()
        out.print("cluster stopped")


def _show(cluster: Cluster) -> None:
    d = cluster.data_dir
    for node in cluster.describe():
        out.print(f"{node['name']}: {node['url']}  pid {node['pid']}  store {node['store']}")
    creds = path_of(d, "<component>")
    admin = path_of(d, "admin")
    out.print(f"\n--nats-url {cluster.url}\n", highlight=False)
    n = len(cluster.nodes)
    out.print(
        "Every component connects with its own credential (the data dir's), e.g.:\n"
        f"  nerve --nats-url {cluster.url} --nats-creds {admin} init --replicas {n}\n"
        f"  nerve --nats-url {cluster.url} --nats-creds {creds} run <component>\n"
        "Ctrl-C stops the cluster.",
        highlight=False,
    )


def _watch(cluster: Cluster) -> None:
    """Until Ctrl-C: say when a node exits (its log says why); the others keep running."""
    gone: set[str] = set()
    while True:
        for node in cluster.nodes:
            if not node.running and node.name not in gone:
                gone.add(node.name)
                out.print(f"{node.name} exited; see {node.log}")
        time.sleep(0.5)
