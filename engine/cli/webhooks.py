"""`nerve webhooks add|list|remove`: who receives interest signals over HTTP.

The subscriptions live in the broker (`engine.webhooks.subscriptions`); the webhooks service
(`nerve run webhooks`, part of `nerve up`) picks a change up within seconds.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from engine.bus import Bus
from engine.cli.app import app
from engine.cli.toolkit import out, with_bus
from engine.errors import ConfigError
from engine.webhooks.feeds import DEFAULT_FEED
from engine.webhooks.subscriptions import Subscription, WebhookStore, subscribe

webhooks_app = typer.Typer(
    help="Deliver interest signals to HTTP receivers (CRMs), signed with HMAC-SHA256 in the "
    "Nerve-Signature header; see the README for verifying it.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL.")],
    topic: Annotated[
        str | None, typer.Option(help="Only signals of this topic (default: every topic).")
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="NERVE_WEBHOOK_SECRET",
            show_envvar=True,
            help="The signing secret (>= 16 characters); default: one is generated and "
            "printed once. Prefer the environment variable (a flag shows in ps).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Subscribe URL to the interest signals stored from now on."""

    async def work(bus: Bus) -> Subscription:
        return await subscribe(bus, url, topic=topic, secret=secret, feed=DEFAULT_FEED)

    sub = with_bus("nerve-webhooks", work)
    if as_json:
        shown = sub.model_dump(mode="json")
        out.print_json(json.dumps(shown) if secret is None else json.dumps(sub.masked()))
        return
    out.print(f"added {sub.id}: {sub.url} (topic {sub.topic or '*'})", highlight=False)
    if secret is None:
        out.print(f"signing secret (shown once, keep it): {sub.secret}", highlight=False)


@webhooks_app.command("list")
def list_subscriptions(as_json: Json = False) -> None:
    """List the subscriptions (secrets masked)."""

    async def work(bus: Bus) -> list[Subscription]:
        try:
            store = await WebhookStore.open(bus)
        except Exception:  # no bucket yet: nothing was ever added
            return []
        return (await store.load())[0]

    subs = with_bus("nerve-webhooks", work)
    if as_json:
        out.print_json(json.dumps([s.masked() for s in subs]))
        return
    table = Table("id", "url", "topic", "secret", "since seq", "created")
    for s in subs:
        m = s.masked()
        table.add_row(
            s.id,
            s.url,
            str(m["topic"]),
            str(m["secret"]),
            str(s.start_seq),
            s.created_at.isoformat(timespec="seconds"),
        )
    out.print(table if subs else "no webhook subscriptions")


@webhooks_app.command("remove")
def remove(
    sub_id: Annotated[str, typer.Argument(metavar="ID", help="The subscription id.")],
) -> None:
    """Stop delivering to a subscription (signals in retry for it are dropped)."""

    async def work(bus: Bus) -> Subscription | None:
        return await (await WebhookStore.open(bus, create=True)).remove(sub_id)

    if with_bus("nerve-webhooks", work) is None:
        raise ConfigError(f"no webhook subscription {sub_id!r} (see nerve webhooks list)")
    out.print(f"removed {sub_id}", highlight=False)
