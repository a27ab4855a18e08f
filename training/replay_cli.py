"""`nerve replay models`: stored history through a candidate model beside the active one, and
its report (a table, a JSON line, an HTML page). The walk itself is `training.replay`.

The JSON line (`--json`, and what `summary` returns) has these keys: `slot`, `horizon`,
`window` (`since`, `until`, `exclude`, `sample`), `events` (`read`, `stored`, `folded`, `refused`,
`excluded`, `decisions`, `unscored`, `evicted`, `users`), `active` and `candidate` (each
`version`, `model`, `config`, `k`, `lists`, `scored`, `hit_rate`, `ndcg`, `coverage`,
`novelty`, `fallback_share`, `empty_share`, `acquisitions`, `acquisition_hit_rate`,
`value_total`, `value_captured`, `value_share`, `offer_mix` {category: share}, `daily` [[day,
scored, hit_rate, ndcg]]), `comparison` (`overlap`, `differ`, `hit_rate_diff`, `ndcg_diff`,
`value_share_diff`, `users_scored`, `user_ndcg_diff`, `ci95`, `verdict`), `seconds`,
`events_per_s`.
"""

from __future__ import annotations

import asyncio
import html as escape
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from engine.bus import Bus
from engine.cli.toolkit import broker, err, out, with_bus
from engine.recommender.catalog import ItemCatalog
from engine.recommender.core import Loaded, Serving
from engine.recommender.slots import SlotsConfig, load_slots
from nerve_client.errors import ConfigError
from nerve_client.subjects import CATALOG
from training.replay import Plan, Replayer, Side, items_only, run
from training.replay_scores import iso

ACTIVE = "active"


def moment(value: str | None, option: str) -> int | None:
    """Unix ms of an ISO date or time (UTC when it names no offset)."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option}: not an ISO date or time: {value!r}") from None
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)


def period(value: str | None) -> tuple[int, int] | None:
    """`T1/T2` as (ms, ms), T1 included, T2 not."""
    if value is None:
        return None
    lo, sep, hi = value.partition("/")
    start, end = moment(lo, "--exclude-window"), moment(hi, "--exclude-window")
    if not sep or start is None or end is None or end <= start:
        raise ConfigError(f"--exclude-window: want T1/T2 with T1 before T2, not {value!r}")
    return start, end


# -- the plan: models from the registry, slots, catalogue ------------------------------------
async def plan(
    bus: Bus,
    base: tuple[SlotsConfig, str],
    other: tuple[SlotsConfig, str] | None,
    *,
    candidate: str | None,
    against: str = ACTIVE,
    slot: str | None = None,
    **window: Any,
) -> Plan:
    """The replay of `candidate` (default: the `against` model, for a counterfactual) under
    `other` (default: `base`) beside `against` (a version, or the active one) under `base`;
    `window`: Plan's since_ms, until_ms, exclude, horizon, max_users, sample, batch."""
    if candidate is None and other is None and window.get("exclude") is None:
        raise ConfigError("--candidate: required unless --config or --exclude-window is given")
    registry = await bus.registry()
    if slot is None:
        slot = await _default_slot(bus, base[0], candidate)
    configs = {"active": base, "candidate": other or base}
    for label, (config, path) in configs.items():
        if slot not in config.slots:
            known = ", ".join(sorted(config.slots))
            raise ConfigError(f"--slot: no slot {slot!r} in {path} ({label}; known: {known})")
    if against == ACTIVE:
        raw = await registry.kv.get(f"active.{base[0].model_slot(slot)}")
        if raw is None:
            raise ConfigError(f"--against: slot {slot!r} has no active model; name a version")
        against = raw.decode()
    catalog = ItemCatalog()
    await bus.scan(CATALOG, catalog.update)
    cache: dict[str, Any] = {}
    sides = []
    for label, version in (("active", against), ("candidate", candidate or against)):
        config, path = configs[label]
        models = {}
        for reg in sorted(config.registry_slots()):
            if reg == config.model_slot(slot):
                models[reg] = await _load(bus, reg, version, cache)
            elif (raw := await registry.kv.get(f"active.{reg}")) is not None:
                models[reg] = await _load(bus, reg, raw.decode(), cache)
        loaded = models[config.model_slot(slot)]
        sides.append(Side(label, version, loaded.name, Serving(config, catalog, models), path))
    return Plan(slot, sides[0], sides[1], **window)


async def _default_slot(bus: Bus, config: SlotsConfig, candidate: str | None) -> str:
    """The slot a candidate of its kind is published to (`training.api.default_slot`)."""
    from training.api import default_slot

    if candidate is None:
        raise ConfigError("--slot: required without --candidate")
    kind = str((await (await bus.registry()).card(candidate)).get("model", "?"))
    reg = default_slot(kind)
    names = sorted((s for s in config.slots if config.model_slot(s) == reg), key=lambda s: s != reg)
    if not names:
        raise ConfigError(f"--slot: no slot is served by registry slot {reg!r} ({kind})")
    return names[0]


async def _load(bus: Bus, reg: str, version: str, cache: dict[str, Any]) -> Loaded:
    from models.base import load_packed

    if version not in cache:
        artifact = await (await bus.registry()).artifact(version)
        cache[version] = await asyncio.to_thread(load_packed, artifact)
    return Loaded(reg, version, cache[version].name, items_only(cache[version]))


# -- the result --------------------------------------------------------------------------------
def summary(r: Replayer) -> dict[str, Any]:
    """The finished replay as one JSON-ready dict (keys: the module docstring)."""
    p, n = r.plan, r.counts["decisions"]
    sides: list[dict[str, Any]] = [
        {"version": side.version, "model": side.model, "config": side.config, "k": k}
        | tally.metrics(r.catalogue, r.popularity, p.active.serving.catalog)
        for side, tally, k in zip((p.active, p.candidate), r.tallies, r.ks, strict=True)
    ]
    a, c = sides
    return {
        "slot": p.slot,
        "horizon": p.horizon,
        "window": {
            "since": iso(p.since_ms),
            "until": iso(p.until_ms),
            "exclude": [iso(x) for x in p.exclude] if p.exclude else None,
            "sample": p.sample,
        },
        "events": {**r.counts, "stored": r.stored, "users": len(r.profiles)},
        "active": a,
        "candidate": c,
        "comparison": {
            "overlap": r.overlap[0] / n if n else 0.0,
            "differ": r.overlap[1] / n if n else 0.0,
            "hit_rate_diff": c["hit_rate"] - a["hit_rate"],
            "ndcg_diff": c["ndcg"] - a["ndcg"],
            "value_share_diff": c["value_share"] - a["value_share"],
            **r.verdict.summary(),
        },
        "seconds": r.seconds,
        "events_per_s": r.counts["read"] / r.seconds if r.seconds else 0.0,
    }


ROWS = (
    ("hit_rate", "hit rate@k"),
    ("ndcg", "nDCG@k"),
    ("value_share", "value captured (share)"),
    ("acquisition_hit_rate", "acquisitions offered"),
    ("coverage", "coverage"),
    ("novelty", "novelty (bits)"),
    ("fallback_share", "fallback share"),
    ("lists", "lists"),
    ("scored", "lists scored"),
)


def table(result: dict[str, Any]) -> Table:
    a, c = result["active"], result["candidate"]
    t = Table(title=f"replay of slot {result['slot']} (next {result['horizon']} interactions)")
    t.add_column("metric")
    t.add_column(f"active {a['version']}", justify="right")
    t.add_column(f"candidate {c['version']}", justify="right")
    t.add_column("difference", justify="right")
    for key, label in ROWS:
        t.add_row(label, _fmt(a[key]), _fmt(c[key]), _fmt(c[key] - a[key], sign=True))
    cmp = result["comparison"]
    t.add_row("overlap@k", "", "", _fmt(cmp["overlap"]))
    t.add_row("lists that differ", "", "", _fmt(cmp["differ"]))
    return t


def verdict_line(result: dict[str, Any]) -> str:
    cmp = result["comparison"]
    ci = cmp["ci95"]
    interval = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
    return (
        f"{cmp['verdict']}: per-user nDCG difference {cmp['user_ndcg_diff']:+.4f}{interval} "
        f"(95 %, {cmp['users_scored']:,} users)"
    )


def _fmt(v: float, sign: bool = False) -> str:
    return f"{v:,}" if isinstance(v, int) and not sign else f"{v:+.4f}" if sign else f"{v:.4f}"


# -- the HTML report ---------------------------------------------------------------------------
def html(result: dict[str, Any]) -> str:
    """One self-contained page: the table, the verdict and three plots with labelled axes."""
    a, c = result["active"], result["candidate"]
    labels = (f"active {a['version']}", f"candidate {c['version']}")
    keys = ["hit_rate", "ndcg", "value_share", "coverage"]
    cats = sorted(set(a["offer_mix"]) | set(c["offer_mix"]))
    specs = [
        ("Metrics (same decision points)", keys, "metric", "value (0-1)"),
        ("Offer mix", cats, "category", "share of shown positions"),
    ]
    mixes = [{k: s[k] for k in keys} for s in (a, c)], [s["offer_mix"] for s in (a, c)]
    plots = [_bars(*spec, mix, labels) for spec, mix in zip(specs, mixes, strict=True)]
    plots.append(_daily(result, labels))
    rows = "".join(
        f"<tr><th>{escape.escape(label)}</th><td>{_fmt(a[k])}</td><td>{_fmt(c[k])}</td></tr>"
        for k, label in ROWS
    )
    ev = result["events"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>replay {escape.escape(result["slot"])}</title><style>body{{font-family:system-ui,
sans-serif;max-width:64rem;margin:2rem auto;color:#222}}td,th{{padding:.2rem .6rem;
border-bottom:1px solid #ddd;text-align:right}}pre{{background:#f5f5f5;padding:1rem;
overflow:auto}}</style></head><body><h1>Replay of slot {escape.escape(result["slot"])}</h1>
<p><strong>{escape.escape(verdict_line(result))}</strong></p>
<p>{ev["read"]:,} events read, {ev["decisions"]:,} decision points, window
{escape.escape(str(result["window"]))}; lists scored against the next {result["horizon"]}
interactions.</p><table><tr><th></th><th>{escape.escape(labels[0])}</th>
<th>{escape.escape(labels[1])}</th></tr>{rows}</table>{"".join(plots)}
<h2>Result</h2><pre>{escape.escape(json.dumps(result, indent=2))}</pre></body></html>
"""


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 3.2))


def _svg(fig: Any, ax: Any) -> str:
    import matplotlib.pyplot as plt

    ax.legend()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return "<figure>" + text[text.index("<svg") :] + "</figure>"


def _bars(
    title: str, names: list[str], xlabel: str, ylabel: str, values: Any, labels: tuple[str, str]
) -> str:
    """Grouped bars: one group per name, one bar per side (`values`: a mapping per side)."""
    fig, ax = _figure()
    for i, (side, label) in enumerate(zip(values, labels, strict=True)):
        xs = [x + (i - 0.5) * 0.4 for x in range(len(names))]
        ax.bar(xs, [side.get(n, 0.0) for n in names], width=0.4, label=label)
    ax.set_xticks(list(range(len(names))), names)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _svg(fig, ax)


def _daily(result: dict[str, Any], labels: tuple[str, str]) -> str:
    fig, ax = _figure()
    for side, label in zip((result["active"], result["candidate"]), labels, strict=True):
        days = [datetime.fromisoformat(d[0]) for d in side["daily"]]
        ax.plot(days, [d[3] for d in side["daily"]], marker=".", label=label)
    ax.set(title="nDCG@k by day of the decision", xlabel="day (UTC)", ylabel="nDCG@k")
    fig.autofmt_xdate()
    return _svg(fig, ax)


# -- the command -------------------------------------------------------------------------------
class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        return Text(f"{task.speed or 0:,.0f} events/s", style="progress.data.speed")


Opt = typer.Option


def replay(
    candidate: Annotated[str | None, Opt(help="Model version to replay (`nerve models`)")] = None,
    against: Annotated[str, Opt(help="'active' (the slot's active model) or a version")] = ACTIVE,
    slot: Annotated[str | None, Opt(help="Slot to replay (default: the candidate kind's)")] = None,
    since: Annotated[str | None, Opt(help="First decision time (ISO; default: the start)")] = None,
    until: Annotated[str | None, Opt(help="Decisions before this time (ISO; default: all)")] = None,
    config: Annotated[
        Path | None, Opt(help="Slots TOML for the candidate side (counterfactual rules)")
    ] = None,
    active_config: Annotated[
        Path | None, Opt(help="Slots TOML of the active side (default: <data dir>/slots.toml)")
    ] = None,
    exclude_window: Annotated[
        str | None, Opt(help="T1/T2: the candidate's profiles leave these events out")
    ] = None,
    horizon: Annotated[int, Opt(min=1, help="Next interactions a list is scored on")] = 5,
    max_users: Annotated[int, Opt(min=1, help="Users kept in memory (LRU)")] = 200_000,
    sample: Annotated[
        float, Opt(min=0.0001, max=1.0, help="Share of users (stable hash) decided on")
    ] = 1.0,
    batch: Annotated[
        int, Opt(min=1, help="Decision points whose lists are computed together")
    ] = 256,
    as_json: Annotated[bool, Opt("--json", help="Print only the JSON line")] = False,
    html_file: Annotated[Path | None, Opt("--html", help="Write the HTML report here")] = None,
) -> None:
    """Replay stored history through a candidate model beside the active one, through the real
    serving pipeline, and score both on what users did next."""
    settings = broker()
    found, base_path = load_slots(active_config, settings.data_dir)
    base = (found, str(base_path))
    other = None if config is None else (load_slots(config)[0], str(config))
    chosen: dict[str, Any] = {"candidate": candidate, "against": against, "slot": slot}
    window: dict[str, Any] = {
        "since_ms": moment(since, "--since"),
        "until_ms": moment(until, "--until"),
        "exclude": period(exclude_window),
        "horizon": horizon,
        "max_users": max_users,
        "sample": sample,
        "batch": batch,
    }

    async def work(bus: Bus) -> dict[str, Any]:
        made = await plan(bus, base, other, **chosen, **window)
        total = sum([await bus.stream_messages(s) for s in ("ACTIVITY", "CRM")])
        columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), _Rate())
        with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
            task = bar.add_task("replay", total=total)
            return summary(await run(bus, made, lambda n: bar.advance(task, n)))

    result = with_bus("nerve-replay", work, settings)
    if html_file is not None:
        html_file.write_text(html(result))
    if as_json:
        out.print(json.dumps(result, allow_nan=False), highlight=False, soft_wrap=True)
        return
    out.print(table(result))
    out.print(verdict_line(result), highlight=False)
    if result["events"]["stored"] and result["events"]["read"] < result["events"]["stored"]:
        err.print("nerve: warning: fewer events read than stored (deleted during the replay?)")
    if html_file is not None:
        out.print(f"report: {html_file}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `nerve replay models` beside `nerve replay profiles` (once; training/cli.py's
    `register` calls this)."""
    groups = [g.typer_instance for g in app.registered_groups if g.name == "replay"]
    group = groups[0] if groups and groups[0] else typer.Typer(no_args_is_help=True)
    if not groups:
        app.add_typer(group, name="replay", help="Rebuild state from the log.")
    if "models" not in {c.name for c in group.registered_commands}:
        group.command("models")(replay)
