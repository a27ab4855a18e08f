"""Commands on the log: init, schema, import, generate, deadletters."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from engine.bus import Bus
from engine.cli.app import app
from engine.cli.toolkit import config_error, default, out, progress, with_bus
from engine.settings import DEFAULT_PARTITIONS, StreamSettings
from nerve_client.errors import ConfigError
from nerve_client.subjects import DEADLETTER


@app.command()
def init(
    replicas: Annotated[
        int | None,
        typer.Option(
            help="Replicas of every stream, bucket and object store (a cluster) [default: 1 "
            "for new ones, what exists otherwise]."
        ),
    ] = default(StreamSettings, "replicas"),
    duplicate_window: Annotated[
        float,
        typer.Option(
            help="Seconds in which a re-sent event id is stored once; ~115 B of server memory "
            "per id inside the window."
        ),
    ] = default(StreamSettings, "duplicate_window_s"),
    activity_max_age_days: Annotated[
        float, typer.Option(help="Drop ACTIVITY events older than this (0 = keep forever).")
    ] = float(default(StreamSettings, "activity_max_age_days")),
    activity_max_bytes: Annotated[
        int, typer.Option(help="Cap ACTIVITY's size, oldest dropped first (0 = unlimited).")
    ] = default(StreamSettings, "activity_max_bytes"),
    partitions: Annotated[
        int | None,
        typer.Option(
            envvar="NERVE_PARTITIONS",
            show_envvar=True,
            help=f"Partitions of ACTIVITY and CRM by user, split among the replicas by the "
            f"broker; fixed once the streams exist [default: {DEFAULT_PARTITIONS} for new "
            "streams, what exists otherwise; 0 = unpartitioned]. A different count for "
            "existing streams is refused.",
        ),
    ] = None,
    lease_s: Annotated[
        float,
        typer.Option(
            envvar="NERVE_LEASE_S",
            show_envvar=True,
            help="Seconds a replica's partition lease lives unless renewed: the longest a "
            "dead replica's users wait for another replica.",
        ),
    ] = default(StreamSettings, "lease_s"),
) -> None:
    """Create or update every stream, KV bucket and object store. Safe to run again."""
    try:
        streams = StreamSettings(
            replicas=replicas,
            duplicate_window_s=duplicate_window,
            activity_max_age_days=activity_max_age_days,
            activity_max_bytes=activity_max_bytes,
            partitions=partitions,
            lease_s=lease_s,
        )
    except ValueError as exc:
        raise config_error(exc) from None

    async def work(bus: Bus) -> None:
        report = await bus.provision(streams)
        for name in report.created:
            out.print(f"created   {name}")
        for name, fields in report.updated.items():
            out.print(f"updated   {name}: {', '.join(fields)}")
        for name in report.unchanged:
            out.print(f"unchanged {name}")

    with_bus("nerve-init", work)


@app.command()
def schema(
    event_type: Annotated[
        str | None,
        typer.Argument(
            help="One event type, or `served_list` (a list as the gateway serves it); "
            "without it, the schema of any event."
        ),
    ] = None,
    list_types: Annotated[bool, typer.Option("--list", help="List the event types.")] = False,
) -> None:
    """Print the JSON Schema of the events, or of what the gateway serves (generated from the
    pydantic models)."""
    from nerve_client.events import LATEST, MODELS, json_schema
    from nerve_client.events.served import DOCUMENTS, document_schema

    if list_types:
        for t, v in sorted(LATEST.items()):
            out.print(f"{t:24} v{v}  {MODELS[(t, v)].properties_model.summary}", highlight=False)
        for name, model in sorted(DOCUMENTS.items()):
            summary = (model.__doc__ or "").split(":")[0]
            out.print(f"{name:24} --  {summary} (HTTP, not an event)", highlight=False)
        return
    try:
        if event_type is not None and event_type in DOCUMENTS:
            doc = document_schema(event_type)
        else:
            doc = json_schema(event_type)
    except KeyError:
        raise ConfigError(f"unknown event type {event_type!r}; see `nerve schema --list`") from None
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="JSON Lines of events, or an interactions CSV.",
        ),
    ],
    fmt: Annotated[str, typer.Option("--format", help="jsonl | interactions")] = "jsonl",
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column order of a headerless interactions file, e.g. user_id,item_id,rating,"
            "timestamp"
        ),
    ] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="Event type for interaction rows without a type column."),
    ] = None,
) -> None:
    """Import a history file into the log: idempotent, resumable, rejects to DEADLETTER.

    A file already imported publishes nothing (a checkpoint keyed by its SHA-256 remembers the
    last acknowledged line); an interrupted import resumes there.
    """
    from engine.importer import import_file

    if fmt not in ("jsonl", "interactions"):
        raise ConfigError(f"--format must be jsonl or interactions, not {fmt!r}")
    cols = tuple(c.strip() for c in columns.split(",")) if columns else None

    async def work(bus: Bus) -> None:
        await bus.provision()
        checkpoints = await bus.kv("imports")
        with progress("bytes") as bar:
            task = bar.add_task(f"import {file.name}", total=file.stat().st_size)
            try:
                summary = await import_file(
                    file,
                    bus.publisher,
                    checkpoints,
                    fmt=fmt,  # type: ignore[arg-type]
                    columns=cols,
                    default_type=event_type,
                    progress=lambda n: bar.advance(task, n),
                )
            except ValueError as exc:
                raise ConfigError(f"{file.name}: {exc}") from None
        if summary.already_complete:
            out.print(
                f"{file.name}: already imported ({summary.accepted} accepted, "
                f"{summary.rejected} rejected); nothing published"
            )
            return
        resumed = f", resumed after line {summary.resumed_from}" if summary.resumed_from else ""
        out.print(
            f"{file.name}: {summary.lines} lines{resumed} in {summary.seconds:.1f}s "
            f"({summary.rate:,.0f} lines/s): {summary.accepted} accepted, "
            f"{summary.duplicates} duplicates, {summary.rejected} rejected (to DEADLETTER)",
            highlight=False,
        )
        for reason in summary.first_reasons:
            out.print(f"  rejected {reason}", highlight=False)

    with_bus("nerve-import", work)


@app.command()
def generate(
    output: Annotated[Path, typer.Option("-o", "--output", help="JSON Lines file to write.")],
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same file.")] = 0,
    end: Annotated[
        str | None, typer.Option(help="Last day (ISO date, UTC midnight); default today.")
    ] = None,
    anomalies: Annotated[
        float,
        typer.Option(
            min=0,
            max=1 / 3,
            help="Plant anomalies: this fraction of users gets each per-user kind (rate burst, "
            "unusual value, new context), and a truth file <stem>.anomalies.jsonl is written "
            "(see engine/synth/anomalies.py). 0: the clean history.",
        ),
    ] = 0.0,
    site_shifts: Annotated[
        int | None,
        typer.Option(
            min=0, help="Site-wide rate shifts to plant with --anomalies; default one a week."
        ),
    ] = None,
) -> None:
    """Write a synthetic bank-site history with planted preferences (see engine/synth/)."""
    from engine.synth import generate as run

    if site_shifts is not None and not anomalies:  # it would be silently ignored
        raise ConfigError("--site-shifts plants with --anomalies RATE; give both")
    end_dt = None
    if end:
        try:
            end_dt = datetime.fromisoformat(end).replace(tzinfo=UTC)
        except ValueError:
            raise ConfigError(f"--end: not an ISO date: {end!r}") from None
    with progress("users") as bar:
        task = bar.add_task("generate", total=users)
        try:
            summary = run(
                output,
                users=users,
                days=days,
                seed=seed,
                end=end_dt,
                progress=lambda n: bar.advance(task, n),
                anomalies=anomalies,
                site_shifts=site_shifts,
            )
        except ValueError as exc:  # e.g. more anomalous users asked for than can have one
            raise ConfigError(f"--anomalies: {exc}") from None
    out.print(
        f"{summary.events:,} events of {summary.users:,} users, "
        f"{summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d} -> {summary.path}",
        highlight=False,
    )
    out.print(
        f"catalogue -> {summary.catalog_path}; planted truth -> {summary.truth_path}",
        highlight=False,
    )
    if summary.anomalies_path:
        kinds = ", ".join(f"{n} {k}" for k, n in summary.planted.items())
        out.print(f"planted anomalies: {kinds} -> {summary.anomalies_path}", highlight=False)
    table = Table("type", "events")
    for t, n in summary.by_type.items():
        table.add_row(t, f"{n:,}")
    out.print(table)


@app.command()
def deadletters(
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 20,
) -> None:
    """Show the newest rejected inputs with who refused them and why."""
    from nerve_client.events import DeadLetter

    async def work(bus: Bus) -> None:
        total, msgs = await bus.last_messages(DEADLETTER, limit)
        out.print(f"{total} dead letters; newest {len(msgs)}:")
        for seq, data in msgs:
            record = DeadLetter.model_validate_json(data)
            out.print(
                f"#{seq} {record.received_at:%Y-%m-%d %H:%M:%S} {record.source} "
                f"{record.origin or ''}: {record.reason}",
                highlight=False,
            )

    with_bus("nerve-deadletters", work)
