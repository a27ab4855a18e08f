"""Commands on profiles: profile, replay profiles, forget."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from engine.bus import Bus
from engine.cli.app import app
from engine.cli.toolkit import Anonymous, User, broker, out, progress, token, with_bus
from nerve_client.errors import NerveError
from nerve_client.subjects import ACTIVITY, CRM


@app.command()
def profile(user: User, anonymous: Anonymous = False) -> None:
    """Print a user's profile as JSON (times are Unix milliseconds)."""
    from engine.profiles.reading import read_profile
    from engine.profiles.store import ProfileStore

    async def work(bus: Bus) -> None:
        found = await read_profile(await ProfileStore.open(bus), user, anonymous=anonymous)
        if found is None:
            raise NerveError(f"no profile for {user!r}")
        sys.stdout.write(found.model_dump_json(indent=2) + "\n")

    with_bus("nerve-profile", work)


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
    from engine.profiles.replay import rebuild, store
    from engine.profiles.replay import verify as compare
    from engine.profiles.store import ProfileStore

    one = token(user, anonymous) if user else None

    async def work(bus: Bus) -> None:
        total = sum([await bus.stream_messages(name) for name in (ACTIVITY, CRM)])
        with progress("events") as bar:
            task = bar.add_task("replay", total=None if one else total)
            result = await rebuild(bus, token=one, progress=lambda n: bar.advance(task, n))
        out.print(
            f"replayed {result.events:,} events into {len(result.profiles):,} profiles "
            f"in {result.seconds:.2f}s ({result.rate:,.0f} events/s); "
            f"{result.refused} could not be applied",
            highlight=False,
        )
        if write:
            n = await store(await ProfileStore.open(bus, into, create=True), result.profiles)
            out.print(f"wrote {n:,} profiles to bucket {into!r}", highlight=False)
        if not verify:
            return
        live = await ProfileStore.open(bus)
        diffs = await compare(live, result.profiles, every_key=one is None)
        for d in diffs[:50]:
            out.print(f"differs: {d.token}: {', '.join(d.fields)}", highlight=False)
        if diffs:
            raise NerveError(f"{len(diffs)} profile(s) differ from the live ones")
        out.print(
            f"verified: {len(result.profiles):,} rebuilt profiles equal the live ones",
            highlight=False,
        )

    with_bus("nerve-replay", work)


@app.command()
def forget(
    user: User,
    anonymous: Anonymous = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a user everywhere in the broker, securely (see engine/profiles/erasure.py)."""
    from engine.profiles.erasure import forget as erase

    if not yes and not typer.confirm(f"Erase every event and the profile of {user!r}?"):
        raise typer.Abort()
    warehouse = broker().data_dir / "warehouse"

    async def work(bus: Bus) -> None:
        report = await erase(bus, token(user, anonymous), warehouse)
        parts = ", ".join(f"{k} {v}" for k, v in report.erased.items())
        out.print(
            f"erased {report.total} messages ({parts}); erasure id {report.erasure_id}",
            highlight=False,
        )

    with_bus("nerve-forget", work)
