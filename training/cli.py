"""The training commands of `nerve`: train, models, recommend-batch.

They live here, not in `engine`, because the engine never imports training; `engine.cli` finds
them through the `nerve.commands` entry point that pyproject.toml declares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table
from typer.core import TyperCommand

from engine.cli.toolkit import broker, err, out
from nerve_client.errors import ConfigError

ModelName = Annotated[str, typer.Option("--model", help="The kind of model: {kinds}")]
Recommender = Annotated[str, typer.Option("--model", help="The kind of model: {recommenders}")]
Params = Annotated[
    str | None, typer.Option("--params", help="Model parameters as JSON, e.g. '{{\"l2\": 100}}'")
]
Force = Annotated[
    bool,
    typer.Option(help="Replace the slot's active model even if it is of another kind"),
]
Candidate = Annotated[
    bool,
    typer.Option(
        help="With --publish: store it in the registry without activating it (a challenger "
        "for nerve replay models and nerve experiments)"
    ),
]
Tune = Annotated[
    bool,
    typer.Option(
        help="Search the model's declared parameter space on a validation slice of the "
        "training part first (never the test part); --params holds a parameter fixed"
    ),
]


class FilledHelp(TyperCommand):
    """A command whose options' help names the kinds and default slots read from the model
    registry when the help is shown: importing `models` costs half a second, which every other
    `nerve` command (all load this plug-in) would pay if the help were built on start."""

    filled = False

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from models import REGISTRY
        from training.api import default_slot, kinds

        if not self.filled:
            names = {
                "kinds": " | ".join(kinds()),
                "recommenders": " | ".join(sorted(REGISTRY)),
                "slots": ", ".join(f"{kind} → {default_slot(kind)}" for kind in kinds()),
            }
            for param in self.params:
                text = getattr(param, "help", None)
                if isinstance(text, str):
                    setattr(param, "help", text.format(**names))  # noqa: B010
            self.filled = True
        super().format_help(ctx, formatter)


def _params(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--params: must be a JSON object")
    return value


def _check_model(name: str, params: dict[str, Any], recommender: bool = False) -> None:
    """`api.config`'s refusals as one line naming the option."""
    from pydantic import ValidationError

    from models import REGISTRY
    from training.api import config

    try:
        config(name, params)  # imports a plugin (pkg.module:Class, entry point), registering it
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(f"--params: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    except ConfigError as exc:
        raise ConfigError(f"--model: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--model: {exc}") from None
    if recommender and name not in REGISTRY:
        raise ConfigError(f"--model: {name!r} is not a recommender (known: {sorted(REGISTRY)})")


def _warn_unserved(slot: str, data_dir: Path) -> None:
    """A warning (not a refusal: a slots file elsewhere may name it) when no slot of the slots
    file the recommender would load here is served by registry slot `slot`."""
    from engine.recommender.slots import load_slots

    config, path = load_slots(None, data_dir)
    if slot not in config.registry_slots():
        served = ", ".join(sorted(config.registry_slots()))
        err.print(
            f"nerve: warning: no slot of {path.name} is served by registry slot {slot!r} "
            f"(those are: {served}); a recommender with that file will not use this model",
            highlight=False,
            markup=False,
        )


@contextmanager
def _trials(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar of tuning trials on stderr (None when not shown)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "tuning", BarColumn(), MofNCompleteColumn(), "trials", TimeElapsedColumn(), console=err
    ) as bar:
        task = bar.add_task("tune", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _show(trained: Any, as_json: bool) -> None:
    """What `nerve train` prints: the card as JSON, or the metrics table and the folder."""
    if as_json:
        card = {**trained.card, "folder": str(trained.folder)}
        out.print(json.dumps(card, indent=2, default=str), highlight=False)
        return
    metrics = trained.card["metrics"]
    if trained.kind == "nbo":
        out.print(json.dumps(metrics, indent=2), highlight=False)
    else:
        table = Table("model", *[m for m in next(iter(metrics.values())) if m != "users"])
        for name, values_ in metrics.items():
            table.add_row(name, *[f"{v:.4f}" for m, v in values_.items() if m != "users"])
        out.print(table)
    active = trained.card.get("active") or {}
    if not active.get("version"):
        out.print(f"no active model: {active.get('reason', '?')}", highlight=False)
    tuning = trained.card.get("tuning")
    if tuning:
        out.print(
            f"tuned: {tuning['search']} search of {len(tuning['trials'])} settings by "
            f"{tuning['metric']} on validation; best {tuning['best']} ({tuning['best_score']:.4f})",
            highlight=False,
        )
    made = (
        "card, artifact and report"
        if (trained.folder / "report.html").exists()
        else "card and artifact"
    )
    out.print(f"{trained.version}: {made} in {trained.folder}", highlight=False)


def train(
    model: ModelName,
    params: Params = None,
    source: Annotated[str, typer.Option(help="warehouse | stream")] = "warehouse",
    since: Annotated[str | None, typer.Option(help="First day (ISO) of history used")] = None,
    until: Annotated[str | None, typer.Option(help="Day (ISO) the history stops before")] = None,
    split: Annotated[
        str, typer.Option(help="global (time cut at 80 %) | last (last 2 per user)")
    ] = "global",
    k: Annotated[int, typer.Option(min=1, help="Cut-off of the top-k metrics")] = 10,
    curve: Annotated[
        bool, typer.Option(help="Fit on 25/50/75/100 % of users for the report")
    ] = True,
    publish: Annotated[bool, typer.Option(help="Store the artifact and make it active")] = False,
    slot: Annotated[
        str | None,
        typer.Option(help="Slot to activate it for, with --publish (default by kind: {slots})"),
    ] = None,
    force: Force = False,
    candidate: Candidate = False,
    tune: Tune = False,
    tune_budget: Annotated[
        int | None,
        typer.Option(min=1, help="With --tune: try this many random settings, not the grid"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the card (metrics, tuning, slices) as JSON")
    ] = False,
) -> None:
    """Train a model on the stored history, evaluate it beside popularity and the slot's active
    model on the same split, write the model card and an HTML report under
    <data dir>/models/<version>/, and optionally publish it.

    --publish prints what it changes (slot home: nbo <version> → nbo <version>). A slot that
    serves another kind of model is left as it is unless --force: exit code 2, checked before
    training, so nothing is trained or stored."""
    from training import api
    from training.history import load_history

    if source not in ("warehouse", "stream") or split not in ("global", "last"):
        raise ConfigError("--source must be warehouse or stream; --split global or last")
    if tune_budget is not None and not tune:
        raise ConfigError("--tune-budget: only with --tune")
    values = _params(params)
    _check_model(model, values)
    settings = broker()
    if candidate and not publish:
        raise ConfigError("--candidate: only with --publish")
    if publish and not candidate:
        slot = api.check_slot(model, slot, force=force, broker=settings)
        _warn_unserved(slot, settings.data_dir)
    frame = load_history(source, since, until, broker=settings)  # type: ignore[arg-type]
    if frame.empty:
        other = "stream" if source == "warehouse" else "warehouse"
        raise ConfigError(f"no history in the {source} for that range (try --source {other})")
    how: Literal["global", "last"] = "last" if split == "last" else "global"
    with _trials(tune and not as_json) as progress:
        trained = api.train(
            frame,
            model,
            values,
            split=how,
            k=k,
            curve=curve,
            data_dir=settings.data_dir,
            tune=tune,
            budget=tune_budget,
            progress=progress,
            slot=slot,
            broker=settings,
        )
    _show(trained, as_json)
    if publish:
        change = api.publish(trained, slot=slot, force=force, candidate=candidate, broker=settings)
        out.print(f"published {trained.version}; {change}", highlight=False)


models_app = typer.Typer(
    help="List the published models, or activate one (roll back).", invoke_without_command=True
)
# Metric columns of `nerve models`, most wanted first: (card metric, or its prefix, header).
COLUMNS = (("ndcg@", "nDCG@k"), ("auc", "AUC"), ("hr@", "HR@k"), ("recall@", "Recall@k"))


@models_app.callback()
def models_list(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print a JSON list (version, model, metrics, slots, ...)"),
    ] = False,
) -> None:
    """List model versions; * marks the active one of each slot. The table keeps the headline
    metrics that fit the terminal (blank where a card has none); --json has them all."""
    from training import api

    if ctx.invoked_subcommand:
        return
    rows = api.listing(broker=broker())
    if as_json:
        out.print(json.dumps(rows, indent=2, allow_nan=False, default=str), highlight=False)
        return
    out.print(_models_table(rows))


def _metric(row: dict[str, Any], prefix: str) -> float | None:
    for name, value in row["metrics"].items():
        if (name == prefix or (prefix.endswith("@") and name.startswith(prefix))) and isinstance(
            value, int | float
        ):
            return float(value)
    return None


def _models_table(rows: list[dict[str, Any]]) -> Table:
    """The listing as a borderless table: the full version always (what `activate` takes), then
    the metric columns that some card holds, as many as fit the console's width."""
    from rich.measure import Measurement

    ks = {row["k"] for row in rows if row.get("k")}
    wanted = [
        (prefix, header.replace("@k", f"@{next(iter(ks))}") if len(ks) == 1 else header)
        for prefix, header in COLUMNS
        if any(_metric(row, prefix) is not None for row in rows)
    ]
    while True:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("")
        table.add_column("version", no_wrap=True)
        table.add_column("model", no_wrap=True)
        for _, header in wanted:
            table.add_column(header, justify="right", no_wrap=True)
        table.add_column("slots")
        for row in rows:
            cells = [_metric(row, prefix) for prefix, _ in wanted]
            table.add_row(
                "*" if row["slots"] else "",
                row["version"],
                str(row.get("model") or "?"),
                *["" if v is None else f"{v:.4f}" for v in cells],
                ", ".join(row["slots"]),
            )
        wide = out.options.update_width(10 * out.width)  # measure unclamped, then compare
        if len(wanted) <= 1 or Measurement.get(out, wide, table).maximum <= out.width:
            return table
        wanted.pop()


@models_app.command("activate", cls=FilledHelp)
def models_activate(
    version: Annotated[str, typer.Argument(help="A version listed by `nerve models`")],
    slot: Annotated[
        str | None, typer.Option(help="The slot it serves (default: its kind's: {slots})")
    ] = None,
    force: Force = False,
) -> None:
    """Make VERSION the active model of a slot (publishes model_published); prints what it
    changes. A slot that serves another kind of model is left as it is unless --force (exit
    code 2)."""
    from training import api

    change = api.activate(version, slot=slot, force=force, broker=broker())
    out.print(str(change), highlight=False)


def recommend_batch(
    train_file: Annotated[
        Path,
        typer.Option(
            "--train", exists=True, dir_okay=False, help="CSV user_id,item_id,timestamp[,rating]"
        ),
    ],
    users_file: Annotated[
        Path, typer.Option("--users", exists=True, dir_okay=False, help="One user id per line")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV user_id,item_id,rank")],
    model: Recommender = "ease",
    params: Params = None,
    k: Annotated[int, typer.Option(min=1)] = 10,
) -> None:
    """Train on an interactions CSV and write the top-k of each listed user; no broker needed,
    so any harness can score any data set (the plug-in contract for outside benchmarks)."""
    from models import make
    from training.batch import write_csv
    from training.history import read_interactions

    values = _params(params)
    _check_model(model, values, recommender=True)
    try:  # pyarrow's CSV reader: typed columns, no row-by-row Python
        read = read_interactions(train_file)
    except ValueError as exc:
        raise ConfigError(f"{train_file.name}: {exc}") from None
    if read.frame.empty:
        raise ConfigError(f"{train_file.name}: no readable interactions")
    data, bad = read.interactions(), read.rejected
    fitted = make(model, **values).fit(data)
    wanted = [u.strip() for u in users_file.read_text().splitlines() if u.strip()]
    if wanted and wanted[0].lower() in ("user_id", "userid", "user"):
        wanted = wanted[1:]
    write_csv(fitted, data, wanted, k, output)  # a chunk of users at a time: bounded memory
    out.print(
        f"{len(wanted):,} users x top {k} -> {output} ({model} on {len(read.frame):,} "
        f"interactions, {data.shape[1]:,} items; {bad} unreadable rows skipped)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the training commands to `nerve` (called through the nerve.commands entry point)."""
    app.command("train", cls=FilledHelp)(train)
    app.add_typer(models_app, name="models")
    app.command("recommend-batch", cls=FilledHelp)(recommend_batch)

    from training.replay_cli import register as register_replay  # `nerve replay models`

    register_replay(app)
