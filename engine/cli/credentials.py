"""`nerve credentials`: issue, list and revoke the embedded broker's credentials for outside
services (a CRM, a reader, an admin tool). Who may do what: `engine.credentials`.

Issuing or revoking rewrites the server's authorization block under the data dir and, when the
embedded server is running, reloads it (SIGHUP) and waits (at most `RELOAD_WAIT_S`) until it
accepts the new credential or refuses the revoked one, so the command's return means it is in
force. The credentials belong to one data dir's embedded broker: for a server the engine does
not run (`--nats-url`), issue them with that server's own tools and pass `--nats-creds`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import orjson
import typer
from rich.table import Table

from engine import credentials, credstore
from engine.broker import reload, running_url
from engine.bus import accepts
from engine.cli.app import app
from engine.cli.toolkit import broker, out
from nerve_client.credentials import Credential
from nerve_client.errors import BrokerError, ConfigError

RELOAD_WAIT_S = 5.0
"""How long `add` / `revoke` wait for the running server to apply its new authorization."""

credentials_app = typer.Typer(
    help="Broker credentials for outside services (the embedded broker refuses anonymous "
    "connections): add NAME --role crm|reader|admin, list, revoke NAME.",
    no_args_is_help=True,
)
app.add_typer(credentials_app, name="credentials")

Role = Annotated[
    str, typer.Option("--role", help="crm (publish crm.>, read SIGNALS), reader, admin.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _data_dir_only() -> None:
    if broker().nats_url:
        raise ConfigError(
            "credentials are issued by the embedded broker of a data dir; for a server given "
            "with --nats-url use that server's tools, then --nats-creds"
        )


def _apply(cred: Credential, accepted: bool) -> bool:
    """Reload the running server; True once it accepts (or refuses) `cred` as wanted, False
    when no server runs (the next start reads the new authorization)."""
    data_dir = broker().data_dir
    url = running_url(data_dir)
    if url is None or reload(data_dir) is None:
        return False

    async def wait() -> bool:
        deadline = time.monotonic() + RELOAD_WAIT_S
        while time.monotonic() < deadline:
            if await accepts(url, cred, timeout=1.0) == accepted:
                return True
            await asyncio.sleep(0.1)
        return False

    if not asyncio.run(wait()):
        raise BrokerError(
            f"the broker at {url} did not apply its new authorization within "
            f"{RELOAD_WAIT_S:g}s; see {data_dir / 'nats-server.log'}"
        )
    return True


@credentials_app.command("add")
def add(name: str, role: Role = "crm", as_json: AsJson = False) -> None:
    """Issue credential NAME with ROLE; prints its file (mode 0600) to hand to the service."""
    _data_dir_only()
    path = credstore.issue(broker().data_dir, name, role)
    cred = Credential.load(path)
    live = _apply(cred, accepted=True)
    if as_json:
        record = {"name": name, "user": cred.user, "role": role, "file": str(path.resolve())}
        out.print(orjson.dumps(record | {"reloaded": live}).decode(), highlight=False)
        return
    out.print(f"credential {name} ({role}): {path.resolve()}", highlight=False)
    out.print("in force now" if live else "in force from the broker's next start", highlight=False)


@credentials_app.command("list")
def listing(as_json: AsJson = False) -> None:
    """The credentials of this data dir: the engine's components and the ones issued."""
    found = credstore.issued(broker().data_dir)
    rows = [
        {
            "name": name,
            "role": c.role,
            "kind": "component" if name in credentials.COMPONENTS else "issued",
            "file": str(credstore.path_of(broker().data_dir, name).resolve()),
        }
        for name, c in found.items()
    ]
    if as_json:
        out.print(orjson.dumps(rows).decode(), highlight=False)
        return
    table = Table("name", "role", "kind", "file")
    for r in rows:
        table.add_row(r["name"], r["role"], r["kind"], r["file"])
    out.print(table if rows else "no credentials yet (the broker creates them on first start)")


@credentials_app.command("revoke")
def revoke(name: str) -> None:
    """Withdraw credential NAME: the running broker refuses it (and drops its connections)."""
    _data_dir_only()
    path = credstore.path_of(broker().data_dir, name)
    cred = Credential.load(path) if path.exists() else None
    credstore.revoke(broker().data_dir, name)
    live = cred is not None and _apply(cred, accepted=False)
    out.print(f"revoked {name}" + ("" if live else " (in force from the next start)"))
