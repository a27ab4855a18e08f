"""Where credentials live: one 0600 JSON file per credential under `<data_dir>/credentials/`
(directory 0700), and the server's `authorization` block built from them (`nats-auth.conf`,
0600, included by the embedded server's config). Who may do what: `engine.credentials`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from engine.credentials import COMPONENTS, OUTSIDE_ROLES, grant, inbox_prefix
from engine.settings import BrokerSettings
from nerve_client.credentials import Credential
from nerve_client.errors import ConfigError

DIR = "credentials"
AUTH_CONF = "nats-auth.conf"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def directory(data_dir: Path) -> Path:
    return data_dir / DIR


def path_of(data_dir: Path, name: str) -> Path:
    return directory(data_dir) / f"{name}.json"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (never readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _ensure_dir(data_dir: Path) -> Path:
    d = directory(data_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def _new(data_dir: Path, name: str, role: str) -> Path:
    path = path_of(data_dir, name)
    record = {
        "user": name,
        "password": secrets.token_urlsafe(32),
        "role": role,
        "inbox_prefix": inbox_prefix(name),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_private(path, json.dumps(record, indent=2) + "\n")
    return path


def ensure_components(data_dir: Path) -> None:
    """Generate the credentials of `COMPONENTS` that do not exist yet."""
    _ensure_dir(data_dir)
    for name in COMPONENTS:
        if not path_of(data_dir, name).exists():
            _new(data_dir, name, "admin" if name == "admin" else name)


def issued(data_dir: Path) -> dict[str, Credential]:
    """Every credential in the data dir, by name (components and outside ones)."""
    d = directory(data_dir)
    if not d.is_dir():
        return {}
    return {p.stem: Credential.load(p) for p in sorted(d.glob("*.json"))}


def component(data_dir: Path, name: str) -> Credential:
    """The credential of an engine component (generated on the embedded broker's start)."""
    path = path_of(data_dir, name)
    if not path.exists():
        raise ConfigError(f"no credential {name!r} in {directory(data_dir)}: start the broker")
    return Credential.load(path)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"credential name {name!r}: lower-case letters, digits, '-' and '_', "
            "starting with a letter, at most 64 characters"
        )
    if name in COMPONENTS:
        raise ConfigError(f"{name!r} is an engine component's credential; choose another name")


def issue(data_dir: Path, name: str, role: str) -> Path:
    """Issue a credential `name` with `role` for an outside service; returns its file."""
    check_name(name)
    if role not in OUTSIDE_ROLES:
        raise ConfigError(f"role {role!r}: one of {', '.join(OUTSIDE_ROLES)}")
    _ensure_dir(data_dir)
    if path_of(data_dir, name).exists():
        raise ConfigError(f"credential {name!r} exists; revoke it first to issue a new one")
    path = _new(data_dir, name, role)
    write_auth_config(data_dir)
    return path


def revoke(data_dir: Path, name: str) -> None:
    """Withdraw an outside credential (the server refuses it after the next reload)."""
    check_name(name)
    path = path_of(data_dir, name)
    if not path.exists():
        raise ConfigError(f"no credential {name!r} in {directory(data_dir)}")
    path.unlink()
    write_auth_config(data_dir)


def _conf_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def auth_config(data_dir: Path) -> str:
    """The server's `authorization` block for every credential in the data dir."""
    lines = [
        "# written by nerve (nerve credentials ...); do not edit",
        "authorization {",
        "  users: [",
    ]
    for name, cred in issued(data_dir).items():
        g = grant(cred.role, name)
        perms = f"publish: {{allow: {_conf_list(g.publish)}}}, "
        perms += f"subscribe: {{allow: {_conf_list(g.subscribe)}}}"
        if g.allow_responses:
            perms += ", allow_responses: true"
        lines.append(
            f"    {{user: {json.dumps(name)}, password: {json.dumps(cred.password)}, "
            f"permissions: {{{perms}}}}}"
        )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def write_auth_config(data_dir: Path) -> Path:
    """Write the authorization block (0600) that the server config includes."""
    path = _ensure_dir(data_dir) / AUTH_CONF
    _write_private(path, auth_config(data_dir))
    return path


def for_component(settings: BrokerSettings, name: str) -> Credential | None:
    """The credential component `name` connects with: `--nats-creds` when given (every
    component shares it), else its own from the embedded broker's data dir, else none (an
    open server, or credentials in the URL)."""
    if settings.nats_creds is not None:
        return Credential.load(settings.nats_creds)
    if settings.embedded or settings.nats_url is None:
        return component(settings.data_dir, name)
    return None
