"""`nerve webhooks add|list|remove`: who receives interest signals over HTTP.

The subscriptions live in the broker (`engine.webhooks.subscriptions`); the webhooks service
(`nerve run webhooks`, part of `nerve up`) picks a change up within seconds. A `--topic` must
be one the signals service detects: a `[signals.<topic>]` of the slots file it reads (the same
`--config` / `NERVE_SLOTS`, else `<data dir>/slots.toml`, else the shipped default), or the
subscription would never receive anything.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Annotated

import typer
from rich.cells import cell_len
from rich.table import Column, Table

from engine.bus import Bus
from engine.cli.app import app
from engine.cli.toolkit import SlotsFile, broker, out, with_bus
from engine.recommender.slots import load_slots
from engine.webhooks.feeds import DEFAULT_FEED, FEEDS
from engine.webhooks.subscriptions import Subscription, WebhookStore, check_topic, subscribe
from nerve_client.errors import ConfigError

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
        str | None,
        typer.Option(
            help="Only this topic: a signal topic ([signals.<topic>] of the slots file) or, "
            "with --feed anomalies, a detector ([anomalies.<name>]); default: every one."
        ),
    ] = None,
    feed: Annotated[
        str,
        typer.Option(
            help="What to deliver: signals (interest_signal) or anomalies (anomaly_detected)."
        ),
    ] = DEFAULT_FEED,
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="NERVE_WEBHOOK_SECRET",
            show_envvar=True,
            help="The signing secret (>= 16 characters); default: one is generated and "
            "printed once. Prefer the environment variable (a flag shows in ps).",
        ),
    ] = None,
    config: SlotsFile = None,
    as_json: Json = False,
) -> None:
    """Subscribe URL to the interest signals (or anomalies) stored from now on."""
    if feed not in FEEDS:
        raise ConfigError(f"--feed: one of {', '.join(FEEDS)}, not {feed!r}")
    if topic is not None:  # before connecting: a topic nothing detects is a usage error
        slots, path = load_slots(config, broker().data_dir)
        check_topic(topic, getattr(slots, feed), path, feed)

    async def work(bus: Bus) -> Subscription:
        return await subscribe(bus, url, topic=topic, secret=secret, feed=feed)

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
    out.print(table_of(subs, out.width) if subs else "no webhook subscriptions")


MIN_URL = 24
"""The narrowest URL column worth showing; below it, optional columns are left out."""
OPTIONAL = ("since seq", "secret", "created")
"""The columns a narrow terminal drops, first to last (`--json` always has them)."""


def table_of(subs: list[Subscription], width: int) -> Table:
    """The subscriptions as a table at most `width` cells wide: the id is always whole (it is
    what `remove` takes), the URL is cut with an ellipsis, and when even a short URL would
    not fit, the optional columns are left out."""
    rows = [row_of(s) for s in subs]
    shown = list(rows[0])
    need = {c: max(cell_len(c), *(cell_len(r[c]) for r in rows)) for c in shown}
    dropping = list(OPTIONAL)
    while True:  # each column costs its padding (2) and a border (1); the table one more
        room = width - 1 - sum(need[c] + 3 for c in shown if c != "url") - 3
        if room >= min(MIN_URL, need["url"]) or not dropping:
            break
        shown.remove(dropping.pop(0))
    columns = [
        Column(c, no_wrap=True, overflow="ellipsis", max_width=max(room, 1))
        if c == "url"
        else Column(c, no_wrap=True, min_width=need[c])
        for c in shown
    ]
    table = Table(*columns)
    for r in rows:
        table.add_row(*(r[c] for c in shown))
    return table


def row_of(sub: Subscription) -> dict[str, str]:
    """One subscription as `list` shows it, by column (secret masked, times in UTC)."""
    m = sub.masked()
    return {
        "id": sub.id,
        "url": sub.url,
        "topic": str(m["topic"]),
        "secret": str(m["secret"]),
        "since seq": str(sub.start_seq),
        "created": sub.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ"),
    }


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
