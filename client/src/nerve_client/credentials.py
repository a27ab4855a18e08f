"""How a client authenticates to the broker: a credential file and TLS files, and the nats-py
connect options they make. The engine issues credentials (`engine.credentials`: roles, grants,
the embedded server's authorization block); a client only loads and presents one."""

from __future__ import annotations

import importlib.util
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerve_client.errors import ConfigError


@dataclass(frozen=True)
class Credential:
    """How one client authenticates: user and password (ours), or a NATS `.creds` file."""

    user: str | None = None
    password: str | None = None
    role: str = "admin"
    inbox_prefix: str = "_INBOX"
    creds_file: Path | None = None

    @classmethod
    def load(cls, path: Path) -> Credential:
        """A credential file: ours (JSON) or a NATS `.creds` file (JWT and nkey seed)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read credential {path}: {exc.strerror}") from None
        if "BEGIN NATS USER JWT" in text:
            return cls(creds_file=path, role="external")
        try:
            raw = json.loads(text)
            return cls(
                user=str(raw["user"]),
                password=str(raw["password"]),
                role=str(raw.get("role", "admin")),
                inbox_prefix=str(raw.get("inbox_prefix", "_INBOX")),
            )
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{path}: neither a Nerve credential (JSON) nor a NATS .creds file"
            ) from None


@dataclass(frozen=True)
class Tls:
    """TLS to the broker: the CA to trust and, for mutual TLS, the client's cert and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def auth_options(credential: Credential | None, tls: Tls | None) -> dict[str, Any]:
    """nats-py connect options for `credential` and `tls` (none: as the URL says)."""
    opts: dict[str, Any] = {}
    if credential is not None:
        if credential.creds_file is not None:
            if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it, lazily
                raise ConfigError(
                    f"{credential.creds_file} is a NATS .creds file: it needs the nkeys "
                    "package (pip install nkeys), or use a `nerve credentials` file"
                )
            opts["user_credentials"] = str(credential.creds_file)
        else:
            opts["user"], opts["password"] = credential.user, credential.password
        opts["inbox_prefix"] = credential.inbox_prefix
    if tls is not None:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if tls.cert is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
        opts["tls"] = context
    return opts
