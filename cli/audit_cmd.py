"""`bbo admin audit` (the organizers' audit log), `bbo admin disqualify` and `bbo admin requalify`.

The actor recorded is `BBO_ACTOR` when set, else the login name (competition.audit.default_actor).
"""

from __future__ import annotations

import sys

import typer

from cli.output import emit_json, err, plain, with_redis

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
        err.print("no organizer actions recorded" + (f" about {plain(target)}" if target else ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("time (UTC)", "actor", "action", "target", "details"):
        table.add_column(column, no_wrap=column != "details")
    for entry in entries:
        details = ", ".join(f"{k}={v}" for k, v in entry["details"].items() if v not in (None, ""))
        # Targets name teams, and details carry reasons and failure messages: shown as text.
        table.add_row(
            *(plain(cell) for cell in (entry["ts"], entry["actor"], entry["action"], entry["target"])),
            plain(details),
        )
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
    err.print(f"submission {sub.id} of team {plain(sub.team)} is disqualified: {plain(sub.disqualified)}")


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
    err.print(f"submission {sub.id} of team {plain(sub.team)} is eligible again")


def refund_command(
    submission: str = typer.Argument(None, help="Submission id (omit: list the refunds awaiting a ruling)."),
    deny: bool = typer.Option(False, "--deny", help="Rule the failure the team's: the upload stays counted."),
    reason: str = typer.Option("", "--reason", help="Why (for the audit log; the team sees the outcome)."),
    as_json: bool = JsonOpt,
) -> None:
    """Rule on a held refund: an infrastructure failure past the team's automatic refunds of the day
    (the spec's submission.refunds_per_day) counts against its quota until an organizer decides."""
    from competition import moderation
    from queue_schema.untrusted import safe_text

    if submission is None:
        held = _with_redis(moderation.held_refunds)
        if as_json:
            emit_json([sub.public_view() for sub in held])
            return
        if not held:
            err.print("no refund awaits a ruling")
        for sub in held:
            message = sub.failure.message if sub.failure else ""
            err.print(f"{sub.id}  {safe_text(sub.team)}  {safe_text(message, limit=200)}", markup=False)
        return
    sub = _with_redis(moderation.decide_refund, submission, not deny, reason=reason)
    if as_json:
        emit_json(sub.public_view())
        return
    outcome = "stays counted against" if deny else "no longer counts against"
    err.print(f"submission {sub.id} {outcome} team {safe_text(sub.team)}'s quota", markup=False)
