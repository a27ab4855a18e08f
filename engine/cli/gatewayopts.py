"""Gateway options as the command line gives them: site keys, their secrets, the port; and
the demo's own site key and operator token (generated once into the data dir).

`nerve up`, `nerve run gateway` and `nerve demo` share these, so each refusal reads the same:
one line naming the option (`--site-keys`, `--site-secrets`, `--port`), exit code 2.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from pathlib import Path

from pydantic import SecretStr

from engine.cli.toolkit import config_error, first_error
from engine.settings import GatewaySettings, SiteKey
from nerve_client.errors import ConfigError


def check_port(host: str, port: int) -> None:
    """Refuse, before anything starts, a port another process holds (uvicorn would otherwise
    fail after the broker, the import and every other service are up). `SO_REUSEADDR` as
    uvicorn binds, so a port in TIME_WAIT is not mistaken for a taken one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reason = "is in use by another process"
            else:
                reason = f"cannot be opened ({exc.strerror})"
            raise ConfigError(
                f"--port: {host}:{port} {reason}; choose another with --port N or NERVE_PORT "
                "(make demo PORT=N)"
            ) from None


def secrets_of(site_secrets: str, keys: set[str]) -> dict[str, str]:
    """`KEY=SECRET,...` as a dict; every KEY must be one of `keys`."""
    found: dict[str, str] = {}
    for entry in site_secrets.split(","):
        if not entry.strip():
            continue
        key, sep, secret = entry.strip().partition("=")
        if not sep or not secret:
            raise ConfigError(f"--site-secrets: {key!r}: expected KEY=SECRET")
        if key not in keys:
            raise ConfigError(f"--site-secrets: {key!r} is not one of --site-keys")
        found[key] = secret
    return found


def site_key_problem(exc: ValueError) -> str:
    """What is wrong with one entry of --site-keys, in the option's own words."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    e = errors()[0]
    what = {"key": "the key", "origins": "its origins", "identity_secret": "its secret"}
    field = str(e["loc"][0]) if e["loc"] else ""
    value = f" {e['input']!r}" if field == "key" else ""
    return f"{what.get(field, field or 'value')}{value}: {e['msg'].removeprefix('Value error, ')}"


def gateway_settings(
    host: str,
    port: int,
    site_keys: str,
    internal_tokens: str,
    rate_limit: float,
    burst: int,
    site_secrets: str = "",
    demo_site: str = "",
    *,
    crm_keys: str = "",
) -> GatewaySettings:
    entries = [k.strip().partition("@") for k in site_keys.split(",") if k.strip()]
    found = secrets_of(site_secrets, {e[0] for e in entries})
    try:
        keys = tuple(
            SiteKey(
                key=key,
                origins=tuple(o for o in origins.split("|") if o) or ("*",),
                rate_per_s=rate_limit,
                burst=burst,
                identity_secret=SecretStr(found[key]) if key in found else None,
            )
            for key, _, origins in entries
        )
    except ValueError as exc:  # the message names the key, not SiteKey's field (`--key`)
        raise ConfigError(f"--site-keys: {site_key_problem(exc)}") from None
    if not keys:
        raise ConfigError("no site key: pass --site-keys or set NERVE_SITE_KEYS")
    if demo_site and demo_site not in found:
        raise ConfigError(f"--demo-site: {demo_site!r} needs a secret in --site-secrets")
    tokens = tuple(t.strip() for t in internal_tokens.split(",") if t.strip())
    crm = tuple(t.strip() for t in crm_keys.split(",") if t.strip())
    try:
        return GatewaySettings(
            host=host,
            port=port,
            site_keys=keys,
            internal_tokens=tokens,
            crm_keys=crm,
            demo_site=demo_site or None,
        )
    except ValueError as exc:  # e.g. a CRM key that is also a site key or internal token
        raise config_error(exc) from None


def demo_site_key(data_dir: Path) -> SiteKey:
    """The demo site's key and identity secret, generated on first use into
    `<data_dir>/demo/site.json` (mode 0600: the secret is the demo backend's alone)."""
    path = data_dir / "demo" / "site.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        site = {
            "key": "demo-" + secrets.token_urlsafe(12),
            "identity_secret": secrets.token_urlsafe(32),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(site, f)
    try:
        return SiteKey.model_validate(json.loads(path.read_text()))
    except ValueError as exc:
        raise ConfigError(f"{path}: {first_error(exc)}; delete it to generate a new one") from None


def demo_ops_token(data_dir: Path) -> str:
    """The demo's internal token (the operator console's sign-in), generated on first use into
    `<data_dir>/demo/ops-token` (mode 0600)."""
    path = data_dir / "demo" / "ops-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("ops-" + secrets.token_urlsafe(24))
    return path.read_text().strip()
