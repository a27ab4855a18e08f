"""The `nerve` command line: one tool, one verb per job.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage or configuration
error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); both stop the services and the
embedded broker cleanly first.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence

import typer

from engine.cli import (  # noqa: F401  (they register their commands)
    cluster,
    credentials,
    crm,
    experiments,
    log,
    profiles,
    reco,
    services,
    webhooks,
)
from engine.cli.app import app
from engine.cli.toolkit import err
from nerve_client.errors import ConfigError, NerveError

__all__ = ["app", "load_plugins", "main"]
_loaded: list[str] = []


def load_plugins() -> None:
    """Add the commands other packages declare under the `nerve.commands` entry point
    (training's), once. Not done on import: a plugin imports `engine.cli.toolkit`, which
    imports this package, so registering here on import would load the plugin half-built."""
    for entry in importlib.metadata.entry_points(group="nerve.commands"):
        if entry.name not in _loaded:
            entry.load()(app)
            _loaded.append(entry.name)


def _fast_loop() -> None:
    """Run on uvloop when it is installed (NERVE_UVLOOP=0 to keep asyncio's own loop):
    NATS-NOTES measured 1.3-1.5x on task-heavy paths such as request/reply."""
    if os.environ.get("NERVE_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps errors to one line and an exit code."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds like Ctrl-C: services and broker stop in order

    signal.signal(signal.SIGTERM, terminate)
    load_plugins()
    _fast_loop()
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except ConfigError as exc:
        err.print(f"nerve: error: {exc}", highlight=False, markup=False)
        sys.exit(2)
    except NerveError as exc:
        err.print(f"nerve: error: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except Exception as exc:
        # click's usage errors (typer may vendor its own click): they know how to show themselves
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
