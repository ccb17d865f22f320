"""`bbo admin submissions` and `bbo admin stop`: the organizers' view of every team's submissions."""

from __future__ import annotations

import sys

import typer

from cli.output import emit_json, err, plain, with_redis

JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout.")


def _with_redis(function, *args, **kwargs):
    from competition.service import ServiceError

    return with_redis(function, *args, errors=(ServiceError,), **kwargs)


def _newest(r, team: str | None, state: str | None, limit: int) -> list:
    from competition import service
    from queue_schema import keys
    from queue_schema.records import load_submissions

    index = keys.team_submissions(team) if team else keys.submissions_index()
    # Read a bounded window, newest first; a state filter may need more than `limit` ids to fill it.
    ids = r.zrevrange(index, 0, (limit if state is None else limit * 20) - 1)
    subs = [s for s in load_submissions(r, ids) if state is None or s.state.value == state]
    return [service.public_view(s) | {"phase": s.phase, "score_version": s.score_version} for s in subs][
        :limit
    ]


def submissions_command(
    team: str = typer.Option(None, "--team", help="Only this team's submissions."),
    state: str = typer.Option(
        None, "--state", help="Only submissions in this state: queued, running, scored, failed, stopped."
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="How many of the newest."),
    as_json: bool = JsonOpt,
) -> None:
    """List submissions of every team, newest first (the organizers' view)."""
    rows = _with_redis(_newest, team, state, limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        err.print("no submissions")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("id", "team", "phase", "state", "score", "studies", "version", "created (UTC)"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        score = row["score"] if row["score"] is not None else row.get("partial_score")
        cause = f" ({row['failure']['cause']})" if row["failure"] else ""
        table.add_row(
            row["id"],
            plain(row["team"]),
            row["phase"],
            row["state"] + cause,
            "" if score is None else f"{score:.3f}",
            f"{row['progress']['studies_done']}/{row['progress']['studies_total']}",
            str(row["score_version"]),
            row["created_at"],
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def stop_command(
    submission: str = typer.Argument(..., help="Submission id."),
    as_json: bool = JsonOpt,
) -> None:
    """Stop any team's queued or running submission: queued jobs are cancelled, running sandboxes killed,
    finished studies kept (audited)."""
    from competition import service

    sub = _with_redis(service.stop, submission)
    if as_json:
        emit_json(service.public_view(sub))
        return
    err.print(f"submission {sub.id} of team {plain(sub.team)} is {sub.state.value}")
