"""`nerve crm-demo`: the reference CRM consumer (engine/crm_demo.py) and its leads."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from engine.cli.app import app
from engine.cli.toolkit import broker, out, with_broker

crm_app = typer.Typer(
    help="A reference CRM built only on nerve_client.client: stores interest signals as leads in "
    "SQLite (<data dir>/crm-demo.sqlite), logs a simulated contact outcome back. Ctrl-C stops.",
    invoke_without_command=True,
)
app.add_typer(crm_app, name="crm-demo")


@crm_app.callback()
def crm_demo(
    ctx: typer.Context,
    durable: Annotated[str, typer.Option(help="The durable consumer name (resumes).")] = "crm-demo",
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after N signals.")] = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from engine.crm_demo import run

    path = broker().data_dir / "crm-demo.sqlite"
    out.print(f"waiting for interest signals (leads in {path}); Ctrl-C stops", highlight=False)

    async def work(url: str) -> int:
        return await run(url, path, durable, lambda line: out.print(line, highlight=False), limit)

    n = with_broker(work)
    out.print(f"{n} signal(s) handled")


@crm_app.command("leads")
def list_leads() -> None:
    """List the leads stored so far."""
    from engine.crm_demo import leads

    rows = leads(broker().data_dir / "crm-demo.sqlite")
    table = Table("received", "user", "topic", "offer", "score", "evidence", "outcome")
    for r in rows:
        table.add_row(str(r[0])[:19], r[1], r[2], r[3] or "", f"{r[4]:g}", str(r[5]), r[6] or "")
    out.print(table if rows else "no leads yet")
