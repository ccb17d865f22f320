"""`bbo admin audit` (the organizers' audit log), `bbo admin disqualify` and `bbo admin requalify`.

The actor recorded is `BBO_ACTOR` when set, else the login name (competition.audit.default_actor).
"""

from __future__ import annotations

import sys

import typer

from cli.output import emit_json, err, with_redis

JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout.")


def _with_redis(function, *args, **kwargs):
    from competition.moderation import ModerationError

    return with_redis(function, *args, errors=(ModerationError,), **kwargs)


def audit_command(
    target: str = typer.Option(None, "--target", help="Only entries about this team or submission."),
    limit: int = typer.Option(100, "--limit", min=1, help="How many of the newest entries."),
    as_json: bool = JsonOpt,
) -> None:
    """List organizer actions (who, when, what, on what, details), oldest first."""
    from competition import audit

    entries = [e.to_dict() for e in _with_redis(audit.read, limit, target)]
    if as_json:
        emit_json(entries)
        return
    if not entries:
        err.print("no organizer actions recorded" + (f" about {target}" if target else ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("time (UTC)", "actor", "action", "target", "details"):
        table.add_column(column, no_wrap=column != "details")
    for entry in entries:
        details = ", ".join(f"{k}={v}" for k, v in entry["details"].items() if v not in (None, ""))
        table.add_row(entry["ts"], entry["actor"], entry["action"], entry["target"], details)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def disqualify_command(
    submission: str = typer.Argument(..., help="Submission id."),
    reason: str = typer.Option(..., "--reason", help="Why; the team sees it in its status."),
    as_json: bool = JsonOpt,
) -> None:
    """Take a submission off the leaderboards (and out of the final selection), with a reason."""
    from competition import moderation

    sub = _with_redis(moderation.disqualify, submission, reason)
    if as_json:
        emit_json(sub.public_view())
        return
    err.print(f"submission {sub.id} of team {sub.team} is disqualified: {sub.disqualified}")


def requalify_command(
    submission: str = typer.Argument(..., help="Submission id."),
    reason: str = typer.Option("", "--reason", help="Why the disqualification is lifted (for the log)."),
    as_json: bool = JsonOpt,
) -> None:
    """Lift a disqualification: the submission is eligible for the leaderboards again."""
    from competition import moderation

    sub = _with_redis(moderation.requalify, submission, reason=reason)
    if as_json:
        emit_json(sub.public_view())
        return
    err.print(f"submission {sub.id} of team {sub.team} is eligible again")
