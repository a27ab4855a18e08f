"""Commands on recommendations: recommend, explain, stats, catalog load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from engine.cli.app import (
    Anonymous,
    SlotsFile,
    User,
    _progress,
    _settings,
    _with_broker,
    app,
    out,
)
from engine.errors import ConfigError, NerveError


@app.command()
def recommend(
    user: User,
    slot: Annotated[str, typer.Option(help="The slot to fill.")] = "home",
    k: Annotated[int | None, typer.Option(min=1, help="At most the slot's k.")] = None,
    item: Annotated[str | None, typer.Option(help="Context item (for a 'similar' slot).")] = None,
    anonymous: Anonymous = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the recommender.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the event as JSON.")] = False,
) -> None:
    """Ask the running recommender (reco.request) for a user's list, and print it."""
    from engine.bus import connect
    from engine.recommender.service import REQUEST_SUBJECT

    settings = _settings()
    body: dict[str, Any] = {"slot": slot, "anonymous_id" if anonymous else "user_id": user}
    if k is not None:
        body["k"] = k
    if item is not None:
        body["context"] = {"item_id": item}

    async def work(url: str) -> dict[str, Any]:
        nc = await connect(url, "nerve-recommend", timeout=settings.connect_timeout)
        try:
            reply = await nc.request(REQUEST_SUBJECT, orjson.dumps(body), timeout=timeout)
        except Exception as exc:
            raise NerveError(
                f"no answer on {REQUEST_SUBJECT} within {timeout:g}s ({type(exc).__name__}): "
                "is `nerve up` or `nerve run recommender` running?"
            ) from None
        finally:
            await nc.close()
        return dict(orjson.loads(reply.data))

    answer = _with_broker(settings, work)
    if "error" in answer:
        e = answer["error"]
        raise NerveError(f"{e['field'] or 'request'}: {e['reason']}")
    if as_json:
        out.print_json(orjson.dumps(answer).decode())
        return
    _print_list(answer)


def _print_list(event: dict[str, Any]) -> None:
    p = event["properties"]
    served = f" via {p['served_by']} ({p.get('fallback')})" if p.get("served_by") else ""
    out.print(
        f"recommendation {event['id']}  slot {p['slot']}{served}  model {p.get('model_version')}"
        f"  reflects ACTIVITY #{p['activity_seq']}, CRM #{p['crm_seq']}  at {event['time']}",
        highlight=False,
    )
    table = Table("#", "item", "score", "reason")
    for i in p["items"]:
        table.add_row(str(i["position"] + 1), i["item_id"], f"{i['score']:.4g}", i["reason"])
    out.print(table)


@app.command()
def explain(
    recommendation_id: Annotated[str, typer.Argument(help="The recommendation id.")],
    user: Annotated[
        str | None, typer.Option(help="Its user: look only at their lists (fast).")
    ] = None,
    anonymous: Anonymous = False,
    config: SlotsFile = None,
) -> None:
    """Print the inputs behind a recommendation, rebuilt from the log and the registry: the
    events it reflects, the model version, the scores and reasons, and the candidates each
    rule removed. Exit 1 if the recomputed list differs from the stored one."""
    from engine.bus import connect
    from engine.recommender.explain import explain as run
    from engine.recommender.slots import load_slots

    settings = _settings()
    slots, _ = load_slots(config, settings.data_dir)

    async def work(url: str) -> Any:
        nc = await connect(url, "nerve-explain", timeout=settings.connect_timeout)
        try:
            with _progress("messages") as bar:
                task = bar.add_task("searching RECOMMENDATIONS", total=None)
                return await run(
                    nc,
                    recommendation_id,
                    slots,
                    user=user,
                    anonymous=anonymous,
                    progress=lambda n: bar.advance(task, n),
                )
        finally:
            await nc.close()

    ex = _with_broker(settings, work)
    _print_list(ex.stored)
    out.print(f"\nstored at RECOMMENDATIONS #{ex.seq}", highlight=False)
    if ex.card:
        metrics = ex.card.get("metrics", {}).get(ex.card.get("model"), {})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:4])
        out.print(
            f"model {ex.card.get('version')} ({ex.card.get('model')}), trained "
            f"{ex.card.get('created_at', '?')}{'; ' + shown if shown else ''}",
            highlight=False,
        )
    events = Table("stream", "seq", "time", "type", "item", title="events it reflects")
    for e in ex.events[-30:]:
        events.add_row(e["stream"], str(e["seq"]), e["time"], e["type"], e.get("item_id") or "")
    if len(ex.events) > 30:
        out.print(f"({len(ex.events) - 30} older events not shown)")
    out.print(events)
    if ex.outcome is not None:
        o = ex.outcome
        rec = Table("#", "item", "score", "reason", title="recomputed")
        for i, r in enumerate(o.items, 1):
            rec.add_row(str(i), r.item_id, f"{r.score:.4g}", r.reason)
        out.print(rec)
        out.print(f"{o.scored} candidates scored; removed before the list was full:")
        removed = Table("item", "rule")
        for item, rule in o.removed:
            removed.add_row(item, rule)
        out.print(removed if o.removed else "  none")
    for note in ex.notes:
        out.print(f"note: {note}", highlight=False)
    if not ex.matches:
        raise typer.Exit(1)
    out.print("the recomputed list matches the stored one")


@app.command()
def stats(
    hours: Annotated[
        float, typer.Option("--hours", min=0.01, help="Window: the last N hours.")
    ] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Click-through rate per slot and model version over a window, computed from the log."""
    from engine.bus import connect
    from engine.recommender.stats import click_through

    settings = _settings()
    since = datetime.now(UTC) - timedelta(hours=hours)

    async def work(url: str) -> Any:
        nc = await connect(url, "nerve-stats", timeout=settings.connect_timeout)
        try:
            return await click_through(nc.jetstream(), since)
        finally:
            await nc.close()

    rows = _with_broker(settings, work)
    if as_json:
        out.print_json(orjson.dumps([r.to_dict() for r in rows]).decode())
        return
    table = Table(
        "slot",
        "model version",
        "impressions",
        "clicks",
        "CTR",
        "dismissals",
        title=f"since {since:%Y-%m-%d %H:%M} UTC",
    )
    for r in rows:
        table.add_row(
            r.slot,
            r.model_version,
            f"{r.impressions:,}",
            f"{r.clicks:,}",
            f"{r.ctr:.2%}",
            f"{r.dismissals:,}",
        )
    out.print(table if rows else "no impressions in the window")


catalog_app = typer.Typer(help="The item catalogue (CATALOG stream).", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("load")
def catalog_load(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines items.")],
) -> None:
    """Upsert items (one JSON object per line: item_id, name, category, value, url, image,
    available, attributes) into CATALOG; refused lines go to DEADLETTER with their reason."""
    from engine.bus import Publisher, connect, provision
    from engine.recommender.catalog import load_lines

    settings = _settings()

    async def work(url: str) -> tuple[int, list[str]]:
        nc = await connect(url, "nerve-catalog", timeout=settings.connect_timeout)
        try:
            await provision(nc.jetstream())
            return await load_lines(file, Publisher(nc))
        finally:
            await nc.close()

    try:
        accepted, refused = _with_broker(settings, work)
    except OSError as exc:
        raise ConfigError(f"{file}: {exc.strerror or exc}") from None
    out.print(
        f"{accepted:,} items upserted into CATALOG, {len(refused):,} refused", highlight=False
    )
    for line in refused[:5]:
        out.print(f"  {line}", highlight=False)
    if refused and not accepted:
        raise typer.Exit(1)
