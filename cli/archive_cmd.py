"""`bbo admin archive`: move complete score versions' study data and logs out of Redis into the archive
(runtime/archiver.py; the workers' reaper does a few per tick by itself)."""

from __future__ import annotations

from typing import Any

import typer

from cli.output import emit_json, err, plain, with_redis


def archive_command(
    submission: str = typer.Argument(None, help="Only this submission (default: every version that is due)."),
    version: int = typer.Option(0, "--version", min=0, help="With SUBMISSION: only this score version."),
    every: bool = typer.Option(
        False, "--all", help="Look through every submission for ended versions, not only the queue."
    ),
    grace: float = typer.Option(
        None,
        "--grace",
        min=0,
        help="Seconds a version must have ended for (default: BBO_ARCHIVE_GRACE_S or 300).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON on stdout."),
) -> None:
    """Archive the score versions that ended (scored, failed, stopped, or replaced by a rescore) more than
    the grace period ago and have no job running: each goes to one verified object in the archive
    (BBO_ARCHIVE_URL, default the state folder's archive/), then leaves Redis. Readers are unchanged."""
    from runtime import archiver

    def run(r: Any) -> dict[str, Any]:
        if submission:
            from queue_schema.records import load_submission

            sub = load_submission(r, submission)
            last = sub.score_version if sub is not None else 1
            chosen = [version] if version else range(1, last + 1)
            reports = [archiver.archive_version(r, submission, v, grace=grace) for v in chosen]
            report = archiver.DueReport(
                archived=[x for x in reports if x.outcome == "archived"],
                waiting=[x for x in reports if x.outcome not in ("archived", "already")],
                taken=len(reports),
            )
            return report.to_dict() | {"already": [x.version for x in reports if x.outcome == "already"]}
        if every:
            return archiver.archive_all(r, grace=grace).to_dict()
        return archiver.archive_due(r, 50, grace=grace).to_dict()

    out = with_redis(run)
    if as_json:
        emit_json(out)
        return
    for done in out["archived"]:
        kb = done["bytes"] / 1024
        err.print(
            f"archived {done['submission']} v{done['version']}: {done['studies']} studies, "
            f"{done['logs']} logs -> {plain(done['object'])} ({kb:.1f} KiB, {done['seconds']:.2f} s)"
        )
    for waiting in out["waiting"]:
        err.print(f"not yet {waiting['submission']} v{waiting['version']}: {plain(waiting['reason'])}")
    for error in out["errors"]:
        err.print(f"[red]error:[/] {plain(error)}")
    if not out["archived"]:
        err.print("nothing archived")
    if "pending" in out and not submission:
        err.print(f"{out['pending']} version(s) still queued for the archive")
