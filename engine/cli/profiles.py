"""Commands on profiles: profile, replay profiles, forget."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from engine.cli.app import (
    Anonymous,
    User,
    _progress,
    _settings,
    _token,
    _with_broker,
    app,
    out,
)
from engine.errors import NerveError


@app.command()
def profile(user: User, anonymous: Anonymous = False) -> None:
    """Print a user's profile as JSON (times are Unix milliseconds)."""
    from engine.bus import connect
    from engine.profiles.reading import read_profile
    from engine.profiles.store import ProfileStore

    settings = _settings()

    async def work(url: str) -> None:
        nc = await connect(url, "nerve-profile", timeout=settings.connect_timeout)
        try:
            found = await read_profile(await ProfileStore.open(nc), user, anonymous=anonymous)
        finally:
            await nc.close()
        if found is None:
            raise NerveError(f"no profile for {user!r}")
        sys.stdout.write(found.model_dump_json(indent=2) + "\n")

    _with_broker(settings, work)


replay_app = typer.Typer(help="Rebuild state from the log.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")


@replay_app.command("profiles")
def replay_profiles(
    user: Annotated[str | None, typer.Option(help="Rebuild only this user.")] = None,
    anonymous: Anonymous = False,
    into: Annotated[
        str,
        typer.Option(
            help="Bucket to write the rebuilt profiles to (created if missing). Writing into the "
            "live 'profiles' bucket while the service runs races with it."
        ),
    ] = "profiles_rebuild",
    verify: Annotated[
        bool,
        typer.Option(help="Compare with the live 'profiles' bucket; exit 1 on any difference."),
    ] = False,
    write: Annotated[bool, typer.Option(help="Write the rebuilt profiles to --into.")] = True,
) -> None:
    """Rebuild profiles from ACTIVITY and CRM (all, or one user's) and optionally verify."""
    from engine.bus import connect
    from engine.profiles.replay import rebuild, store
    from engine.profiles.replay import verify as compare
    from engine.profiles.store import ProfileStore

    settings = _settings()
    token = _token(user, anonymous) if user else None

    async def work(url: str) -> int:
        nc = await connect(url, "nerve-replay", timeout=settings.connect_timeout)
        try:
            js = nc.jetstream()
            total = 0
            for name in ("ACTIVITY", "CRM"):
                with contextlib.suppress(Exception):
                    total += (await js.stream_info(name)).state.messages
            with _progress("events") as bar:
                task = bar.add_task("replay", total=None if token else total)
                result = await rebuild(js, token=token, progress=lambda n: bar.advance(task, n))
            out.print(
                f"replayed {result.events:,} events into {len(result.profiles):,} profiles "
                f"in {result.seconds:.2f}s ({result.rate:,.0f} events/s); "
                f"{result.refused} could not be applied",
                highlight=False,
            )
            if write:
                n = await store(await ProfileStore.open(nc, into, create=True), result.profiles)
                out.print(f"wrote {n:,} profiles to bucket {into!r}", highlight=False)
            if not verify:
                return 0
            live = await ProfileStore.open(nc)
            diffs = await compare(live, result.profiles, every_key=token is None)
            for d in diffs[:50]:
                out.print(f"differs: {d.token}: {', '.join(d.fields)}", highlight=False)
            if diffs:
                raise NerveError(f"{len(diffs)} profile(s) differ from the live ones")
            out.print(
                f"verified: {len(result.profiles):,} rebuilt profiles equal the live ones",
                highlight=False,
            )
            return 0
        finally:
            await nc.close()

    _with_broker(settings, work)


@app.command()
def forget(
    user: User,
    anonymous: Anonymous = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a user everywhere in the broker, securely (see engine/profiles/erasure.py)."""
    from engine.bus import Publisher, connect
    from engine.profiles.erasure import forget as erase

    if not yes and not typer.confirm(f"Erase every event and the profile of {user!r}?"):
        raise typer.Abort()
    settings = _settings()

    async def work(url: str) -> None:
        nc = await connect(url, "nerve-forget", timeout=settings.connect_timeout)
        try:
            report = await erase(
                nc, _token(user, anonymous), Publisher(nc), settings.data_dir / "warehouse"
            )
        finally:
            await nc.close()
        parts = ", ".join(f"{k} {v}" for k, v in report.erased.items())
        out.print(
            f"erased {report.total} messages ({parts}); erasure id {report.erasure_id}",
            highlight=False,
        )

    _with_broker(settings, work)
