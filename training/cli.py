"""The training commands of `nerve`: train, models, recommend-batch.

They live here, not in `engine`, because the engine never imports training; `engine.cli` finds
them through the `nerve.commands` entry point that pyproject.toml declares.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from engine.bus import Bus
from engine.cli.toolkit import broker, out, with_bus
from engine.errors import ConfigError
from engine.settings import BrokerSettings

ModelName = Annotated[str, typer.Option("--model", help="popular | itemknn | ease | als | nbo")]
Params = Annotated[
    str | None, typer.Option("--params", help="Model parameters as JSON, e.g. '{\"l2\": 100}'")
]


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


def _check_model(name: str, params: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from models import make

    try:
        make(name, **params)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            e = exc.errors()[0]
            raise ConfigError(f"--params: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        raise ConfigError(f"--model: {exc}") from None


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
    slot: Annotated[str, typer.Option(help="Slot to activate it for, with --publish")] = "home",
) -> None:
    """Train a model on the stored history, evaluate it beside popularity, write the model card
    and an HTML report under <data dir>/models/<version>/, and optionally publish it."""
    from models.base import pack
    from training.history import load_history
    from training.train import train as run
    from training.train import write

    if source not in ("warehouse", "stream") or split not in ("global", "last"):
        raise ConfigError("--source must be warehouse or stream; --split global or last")
    values = _params(params)
    if model == "nbo":
        _nbo_config(values)
    else:
        _check_model(model, values)
    settings = broker()
    frame = load_history(
        source,  # type: ignore[arg-type]
        since,
        until,
        data_dir=settings.data_dir,
        nats_url=settings.nats_url,
    )
    if frame.empty:
        raise ConfigError(f"no history in the {source} for that range (try --source stream)")
    if model == "nbo":
        version, card, folder = _train_nbo(frame, values, settings.data_dir / "models")
        out.print(json.dumps(card["metrics"], indent=2), highlight=False)
        out.print(f"{version}: card and artifact in {folder}", highlight=False)
        if publish:
            _publish(settings, version, card, pack(folder), slot)
        return
    result = run(frame, model, values, how=split, k=k, curve=curve)  # type: ignore[arg-type]
    folder = write(result, settings.data_dir / "models")
    table = Table("model", *[m for m in next(iter(result.metrics.values())) if m != "users"])
    for name, values_ in result.metrics.items():
        table.add_row(name, *[f"{v:.4f}" for m, v in values_.items() if m != "users"])
    out.print(table)
    out.print(f"{result.version}: card, artifact and report in {folder}", highlight=False)
    if publish:
        _publish(settings, result.version, result.card, pack(folder), slot)


def _publish(
    settings: BrokerSettings, version: str, card: dict[str, Any], artifact: bytes, slot: str
) -> None:
    async def work(bus: Bus) -> None:
        await (await bus.registry()).publish(version, card, artifact, slot)
        out.print(f"published {version} and made it active for slot {slot!r}", highlight=False)

    with_bus("nerve-train", work, settings)


def _nbo_config(values: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from models.nbo import NBOConfig

    try:
        return NBOConfig(**values)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(f"--params: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None


def _train_nbo(frame: Any, values: dict[str, Any], root: Path) -> tuple[str, dict[str, Any], Path]:
    from datetime import UTC, datetime

    from training.nbo import train_nbo
    from training.train import _versions

    config = _nbo_config(values)
    result = train_nbo(frame, config)
    now = datetime.now(UTC)
    version = f"nbo-{now:%Y%m%dT%H%M%S}"
    folder = result.model.save(root / version)
    card = {
        "version": version,
        "model": "nbo",
        "params": config.model_dump(mode="json"),
        "created_at": now.isoformat(),
        "data": {
            "events": len(frame),
            "from": frame["time"].min().isoformat(),
            "to": frame["time"].max().isoformat(),
            "seq_from": int(frame["seq"].min()),
            "seq_to": int(frame["seq"].max()),
            "offers": result.model.offers,
        },
        "metrics": {"nbo": result.metrics},
        "auc_by_offer": result.auc_by_offer,
        "libraries": _versions(),
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return version, card, folder


models_app = typer.Typer(
    help="List the published models, or activate one (roll back).", invoke_without_command=True
)


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List model versions; * marks the active one of each slot."""
    if ctx.invoked_subcommand:
        return

    async def work(bus: Bus) -> None:
        cards, active = await (await bus.registry()).listing()
        table = Table("", "version", "model", "created", "ndcg@k / auc", "slots")
        for card in cards:
            slots = [s for s, v in active.items() if v == card["version"]]
            metrics = card.get("metrics", {}).get(card.get("model"), {})
            ndcg = next((v for m, v in metrics.items() if m.startswith(("ndcg", "auc"))), None)
            table.add_row(
                "*" if slots else "",
                card["version"],
                card.get("model", "?"),
                card.get("created_at", "")[:19],
                f"{ndcg:.4f}" if isinstance(ndcg, float) else "-",
                ", ".join(slots),
            )
        out.print(table)

    with_bus("nerve-models", work)


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="A version listed by `nerve models`")],
    slot: Annotated[str, typer.Option(help="The slot it serves")] = "home",
) -> None:
    """Make VERSION the active model of a slot (publishes model_published)."""

    async def work(bus: Bus) -> None:
        await (await bus.registry()).activate(version, slot)
        out.print(f"{version} is now active for slot {slot!r}", highlight=False)

    with_bus("nerve-models", work)


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
    model: ModelName = "ease",
    params: Params = None,
    k: Annotated[int, typer.Option(min=1)] = 10,
) -> None:
    """Train on an interactions CSV and write the top-k of each listed user; no broker needed,
    so any harness can score any data set (the plug-in contract for outside benchmarks)."""
    from engine.errors import EventRejected
    from engine.importer import InteractionReader
    from models import Interactions, make
    from training.evaluate import recommend_for

    values = _params(params)
    _check_model(model, values)
    with train_file.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
        try:
            reader = InteractionReader(first, None, None)
        except ValueError as exc:
            raise ConfigError(f"{train_file.name}: {exc}") from None
        lines = ([] if reader.has_header else [first]) + [x.rstrip("\r\n") for x in f]
    users, items, weights, bad = [], [], [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = reader.event(line)
        except EventRejected:
            bad += 1
            continue
        users.append(str(event["user_id"]))
        items.append(str(event["item_id"]))
        weights.append(float(event["properties"].get("rating", 1.0)))
    if not users:
        raise ConfigError(f"{train_file.name}: no readable interactions")
    data = Interactions.from_triples(users, items, weights)
    fitted = make(model, **values).fit(data)
    wanted = [u.strip() for u in users_file.read_text().splitlines() if u.strip()]
    if wanted and wanted[0].lower() in ("user_id", "userid", "user"):
        wanted = wanted[1:]
    recs = recommend_for(fitted, data, wanted, k)
    with output.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rank"])
        for user in wanted:
            for rank, item in enumerate(recs.get(user, []), 1):
                w.writerow([user, item, rank])
    out.print(
        f"{len(wanted):,} users x top {k} -> {output} ({model} on {len(users):,} "
        f"interactions, {data.shape[1]:,} items; {bad} unreadable rows skipped)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the training commands to `nerve` (called through the nerve.commands entry point)."""
    app.command("train")(train)
    app.add_typer(models_app, name="models")
    app.command("recommend-batch")(recommend_batch)
