"""Commands on recommendations: recommend, explain, stats, catalog load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from engine.bus import Bus, NoAnswer
from engine.cli.app import app
from engine.cli.toolkit import Anonymous, SlotsFile, User, broker, err, out, progress, with_bus
from nerve_client.errors import ConfigError, NerveError
from nerve_client.subjects import REQUEST_SUBJECT


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
    body: dict[str, Any] = {"slot": slot, "anonymous_id" if anonymous else "user_id": user}
    if k is not None:
        body["k"] = k
    if item is not None:
        body["context"] = {"item_id": item}

    async def work(bus: Bus) -> dict[str, Any]:
        try:
            reply = await bus.request(REQUEST_SUBJECT, orjson.dumps(body), timeout)
        except NoAnswer as exc:
            raise NerveError(
                f"no answer on {REQUEST_SUBJECT} within {timeout:g}s ({exc.reason}): "
                "is `nerve up` or `nerve run recommender` running?"
            ) from None
        return dict(orjson.loads(reply))

    answer = with_bus("nerve-recommend", work)
    if "error" in answer:
        e = answer["error"]
        raise NerveError(f"{e['field'] or 'request'}: {e['reason']}")
    warning = answer.pop("warning", None)  # e.g. k above the slot's maximum: served the maximum
    if warning:
        err.print(f"nerve: warning: {warning}", highlight=False, markup=False)
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
    from engine.recommender.explain import Explanation
    from engine.recommender.explain import explain as run
    from engine.recommender.slots import load_slots

    slots, _ = load_slots(config, broker().data_dir)

    async def work(bus: Bus) -> Explanation:
        with progress("messages") as bar:
            task = bar.add_task("searching RECOMMENDATIONS", total=None)
            return await run(
                bus,
                recommendation_id,
                slots,
                user=user,
                anonymous=anonymous,
                progress=lambda n: bar.advance(task, n),
            )

    ex = with_bus("nerve-explain", work)
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
    from engine.recommender.stats import SlotStats, click_through

    since = datetime.now(UTC) - timedelta(hours=hours)

    async def work(bus: Bus) -> list[SlotStats]:
        return await click_through(bus, since)

    rows = with_bus("nerve-stats", work)
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
    from engine.recommender.catalog import load_lines

    async def work(bus: Bus) -> tuple[int, list[str]]:
        await bus.provision()
        return await load_lines(file, bus)

    try:
        accepted, refused = with_bus("nerve-catalog", work)
    except OSError as exc:
        raise ConfigError(f"{file}: {exc.strerror or exc}") from None
    out.print(
        f"{accepted:,} items upserted into CATALOG, {len(refused):,} refused", highlight=False
    )
    for line in refused[:5]:
        out.print(f"  {line}", highlight=False)
    if refused and not accepted:
        raise typer.Exit(1)
