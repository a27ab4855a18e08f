"""`nerve experiments`: start, read, stop and promote shadow and A/B experiments."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from engine.bus import Bus
from engine.cli.app import app
from engine.cli.toolkit import out, with_bus
from engine.experiments import spec
from engine.experiments.reading import experiment_report
from engine.experiments.report import Comparison, ExperimentReport, Rate

experiments_app = typer.Typer(
    help="Shadow and A/B experiments: a challenger model beside a slot's active one.",
    invoke_without_command=True,
)
app.add_typer(experiments_app, name="experiments")
Which = Annotated[str, typer.Argument(help="The experiment id, or the slot of a running one.")]


@experiments_app.callback()
def experiments_list(
    ctx: typer.Context,
    every: Annotated[bool, typer.Option("--all", help="Also the stopped ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per line.")] = False,
) -> None:
    """The running experiments with their result per variant (impressions, clicks, CTR,
    conversions, value, hit rate, with 95 % intervals) and whether the difference is
    significant."""
    if ctx.invoked_subcommand:
        return

    async def work(bus: Bus) -> list[ExperimentReport]:
        found = await spec.listing(await bus.registry())
        return [await experiment_report(bus, e) for e in found if every or e.running]

    reports = with_bus("nerve-experiments", work)
    if as_json:
        for r in reports:
            out.print(r.model_dump_json(), highlight=False, soft_wrap=True)
        return
    if not reports:
        out.print("no experiments running (`nerve experiments start --help`)", highlight=False)
    for r in reports:
        print_report(r)


@experiments_app.command("start")
def experiments_start(
    slot: Annotated[str, typer.Option(help="The registry slot (as `nerve models` shows).")],
    challenger: Annotated[str, typer.Option(help="The model version to try.")],
    share: Annotated[
        float, typer.Option(help="% of users in the challenger (or computing the shadow).")
    ] = 10.0,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Compute and log the challenger, never show it.")
    ] = False,
    attribution_days: Annotated[
        float, typer.Option(help="Days after a click a purchase of the item counts for it.")
    ] = spec.DEFAULT_ATTRIBUTION_DAYS,
) -> None:
    """Start an experiment: CHALLENGER on SHARE % of the users of SLOT (a stable hash of the
    user), or in shadow. Refused when the slot runs one or serving cannot load the model."""

    async def work(bus: Bus) -> spec.Experiment:
        return await spec.start(
            await bus.registry(),
            slot,
            challenger,
            share,
            shadow=shadow,
            attribution_days=attribution_days,
        )

    e = with_bus("nerve-experiments", work)
    how = "in shadow for" if e.mode == "shadow" else "served to"
    out.print(
        f"started {e.id}: {e.challenger} {how} {e.share:g}% of the users of slot {e.slot} "
        f"(control {e.control or 'none'})",
        highlight=False,
    )


@experiments_app.command("stop")
def experiments_stop(which: Which) -> None:
    """Stop an experiment: every user gets the active model again."""

    async def work(bus: Bus) -> spec.Experiment:
        return await spec.stop(await bus.registry(), which)

    e = with_bus("nerve-experiments", work)
    out.print(f"stopped {e.id}; slot {e.slot} keeps {e.control or 'its model'}", highlight=False)


@experiments_app.command("promote")
def experiments_promote(which: Which) -> None:
    """Make the challenger the slot's active model (as `nerve models activate`) and stop."""

    async def work(bus: Bus) -> spec.Experiment:
        return await spec.promote(await bus.registry(), which)

    e = with_bus("nerve-experiments", work)
    out.print(f"promoted {e.challenger} to slot {e.slot}; stopped {e.id}", highlight=False)


def _rate(r: Rate) -> str:
    if r.rate is None or r.low is None or r.high is None:
        return "-"
    return f"{100 * r.rate:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}]"


def comparison_line(c: Comparison) -> str:
    """`challenger - control ctr: +1.20 pp [-0.30, +2.70], p = 0.12: not significant`."""
    head = f"{c.variant} - {c.against} {c.metric}: "
    if c.difference is None or c.low is None or c.high is None:
        return head + "not enough data"
    p = "-" if c.p_value is None else f"{c.p_value:.3g}"
    verdict = "significant at 95%" if c.significant else "not significant"
    return (
        f"{head}{100 * c.difference:+.2f} pp [{100 * c.low:+.2f}, {100 * c.high:+.2f}], "
        f"p = {p}: {verdict}"
    )


def print_report(r: ExperimentReport) -> None:
    e = r.experiment
    state = e.outcome if not e.running else "running"
    out.print(
        f"{e.id}  slot {e.slot}  {e.mode} {e.share:g}%  control {e.control or '-'}  "
        f"challenger {e.challenger}  {state} since {e.started_at:%Y-%m-%d %H:%M}",
        highlight=False,
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("variant", no_wrap=True)
    for name in ("users", "lists", "shown", "clicks", "CTR [95%]", "conv.", "value", "hits [95%]"):
        table.add_column(name, justify="right", no_wrap=True)
    for v in r.variants:
        table.add_row(
            v.variant,
            str(v.users),
            str(v.lists),
            str(v.impressions),
            str(v.clicks),
            _rate(v.ctr),
            str(v.conversions),
            f"{v.value:.2f}",
            _rate(v.hit_rate),
        )
    out.print(table)
    for c in r.comparisons:
        out.print("  " + comparison_line(c), highlight=False)
    out.print(f"  ({r.method})", highlight=False)


__all__ = ["comparison_line", "experiments_app", "print_report"]
