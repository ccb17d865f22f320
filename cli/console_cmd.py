"""`bbo admin console [--readonly]`: the organizers' live terminal console (console/)."""

from __future__ import annotations

import typer

from cli.output import with_redis


def _run(r, readonly: bool, refresh: float) -> None:
    from console.app import ConsoleApp

    ConsoleApp(r, readonly=readonly, refresh_s=refresh).run()


def console_command(
    readonly: bool = typer.Option(False, "--readonly", help="Watch only: stop and rescore are disabled."),
    refresh: float = typer.Option(1.0, "--refresh", min=0.1, help="Seconds between live updates."),
) -> None:
    """Watch submissions, logs, leaderboard and fleet live; stop and rescore with a confirmation.

    Uses BBO_REDIS_URL, else the embedded Redis of the state folder (started if none runs)."""
    with_redis(_run, readonly, refresh)
