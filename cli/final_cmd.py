"""`bbo admin rescore` (a new score version of a submission) and `bbo admin final` (the final phase).

Both call `competition` directly; both are organizer actions, recorded in the audit log under
`BBO_ACTOR` (else the login name). The jobs they enqueue go to the priority queue: the running workers
(`bbo admin up`) score them first.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Any

import typer

from cli.output import emit_json, err, fail, plain, studies_progress
from queue_schema.payloads import utc_iso

JsonOpt = typer.Option(False, "--json", help="Print JSON on stdout.")
BACKENDS = ("auto", "docker", "bwrap", "process")
SpecOpt = typer.Option(
    None, "--spec", help="Competition spec: a shipped name or a path (default: BBO_SPEC, else demo)."
)


def _say(message: str) -> None:
    err.print(message, soft_wrap=True)  # one line per message, however narrow the terminal


def _spec_name(name: str | None) -> str:
    return name or os.environ.get("BBO_SPEC") or "demo"


def _check_backend(backend: str | None) -> None:
    from queue_schema.settings import unsafe_sandbox_allowed

    if backend is not None and backend not in BACKENDS:
        fail(f"unknown sandbox backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "process" and not unsafe_sandbox_allowed():
        fail(
            "the process backend runs team code without isolation; set BBO_ALLOW_UNSAFE_SANDBOX=1 to allow it"
        )


@contextmanager
def _store():
    """A Redis client, with every refusal of the competition layer turned into a one-line error."""
    from competition import service
    from queue_schema.connection import RedisUnavailable, connect
    from runtime.redis_server import ensure_redis
    from runtime.spec import SpecError
    from runtime.versions import BaselineError

    try:
        with ensure_redis() as url:
            yield connect(url)
    except (service.ServiceError, SpecError, BaselineError, RedisUnavailable) as exc:
        fail(str(exc))


def _rescored_view(sub: Any) -> dict[str, Any]:
    return {
        **sub.public_view(),
        "score_version": sub.score_version,
        "spec_hash": sub.spec_hash,
        "baseline_version": sub.baseline_version,
    }


def rescore_command(
    submission: str = typer.Argument(None, metavar="[ID]", help="The submission to rescore."),
    all_scored: bool = typer.Option(
        False, "--all-scored", help="Rescore every scored submission of the competition instead."
    ),
    spec_name: str = typer.Option(
        None,
        "--spec",
        help="Spec to score under (default: the current file of the submission's competition; "
        "with --all-scored: BBO_SPEC, else demo).",
    ),
    phase: str = typer.Option(None, "--phase", help="With --all-scored: only this phase's submissions."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the version record and the audit log)."),
    backend: str = typer.Option(
        None, "--backend", help="Sandbox for the new jobs (default: the one the last version used)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Score a submission again as a new version (current spec, baselines, image); old versions stay.

    The submission must be scored, stopped or failed (stop a running one first). The leaderboard keeps
    showing its last scored version until the new one is scored. Never charged to the team's quota."""
    from competition import rescore
    from runtime.spec import load

    if (submission is None) == (not all_scored):
        fail("give one submission ID, or --all-scored")
    _check_backend(backend)
    with _store() as r:
        if not all_scored:
            spec = load(spec_name) if spec_name else None
            sub = rescore.rescore(r, submission, spec=spec, reason=reason, backend=backend)
            if as_json:
                emit_json(_rescored_view(sub))
            else:
                _say(
                    f"rescoring [bold]{sub.id}[/] (team {plain(sub.team)}) as version {sub.score_version}: "
                    f"spec {sub.spec_name}/{sub.spec_hash}, baselines {sub.baseline_version or '-'}; "
                    "queued with priority"
                )
            return
        spec = load(_spec_name(spec_name))
        if phase is not None:
            spec.phase(phase)
        done, skipped = rescore.rescore_all(r, spec, phase=phase, reason=reason, backend=backend)
    if as_json:
        emit_json(
            {
                "rescored": [_rescored_view(sub) for sub in done],
                "skipped": [{"id": sid, "reason": why} for sid, why in skipped],
            }
        )
        return
    for sid, why in skipped:
        _say(f"skipped {sid}: {plain(why)}")
    _say(f"rescoring {len(done)} scored submission(s) of {spec.name}; queued with priority")


def final_command(
    action: str = typer.Argument(
        None,
        help="Omit to launch the final phase; `release` publishes the final leaderboard to teams "
        "(until then they get 'final results pending').",
    ),
    top: int = typer.Option(
        None, "--top", min=1, help="How many teams of the feedback leaderboard enter (default: all)."
    ),
    spec_name: str = SpecOpt,
    backend: str = typer.Option("auto", "--backend", help="Sandbox of the final jobs."),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the final submissions until they end (workers must be running)."
    ),
    timeout: float = typer.Option(0, "--timeout", help="With --wait: give up after this many seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Launch the final phase: each top team's chosen (else best) feedback submission, scored on the
    held-out problems; then (with --wait) the final leaderboard with 95% intervals and rank stability.

    Running it again launches nothing twice. JSON: {"phase", "launches": [...], "rows": [...]}.
    `bbo admin final release` makes the final leaderboard public (JSON: {"phase", "released_at"})."""
    from competition import final, release, service
    from runtime.spec import load

    if action not in (None, "release"):
        fail(f"unknown action {action!r}: `bbo admin final` launches, `bbo admin final release` publishes")
    _check_backend(backend)
    with _store() as r:
        spec = load(_spec_name(spec_name))
        if action == "release":
            when = utc_iso(release.release(r, spec.name))
            if as_json:
                emit_json({"phase": "final", "competition": spec.name, "released_at": when})
            else:
                _say(f"the final leaderboard of {spec.name} is public since {when}")
            return
        launches = final.run_final(r, spec, top=top, backend=backend)
        for launch in launches:
            if launch.error:
                _say(f"[red]team {plain(launch.team)}[/]: not launched: {plain(launch.error)}")
            else:
                verb = "launched" if launch.created else f"already launched ({launch.state})"
                how = "its pick" if launch.selected else "its best"
                _say(f"team {plain(launch.team)}: {verb} {launch.submission} from {launch.source} ({how})")
        if not launches:
            _say("no team has a scored feedback submission: nothing to launch")
        if wait and launches:
            _wait(r, [x.submission for x in launches if x.submission], timeout)
        rows = service.leaderboard(r, "final", spec.name)
    if as_json:
        emit_json({"phase": "final", "launches": [x.to_dict() for x in launches], "rows": rows})
    elif wait:
        _print_board(rows)


def _wait(r: Any, ids: list[str], timeout: float) -> None:
    from rq import Worker

    from queue_schema.connection import rq_connection
    from queue_schema.records import load_submissions
    from queue_schema.states import TERMINAL_STATES

    if Worker.count(connection=rq_connection()) == 0:
        _say("[yellow]no worker is running[/]: start `bbo admin up` (or `bbo admin worker`) to score them")
    started = time.monotonic()
    with studies_progress() as progress:
        task = progress.add_task("final", total=None, score="")
        while True:
            subs = load_submissions(r, ids)
            ended = sum(s.state in TERMINAL_STATES for s in subs)
            progress.update(
                task,
                completed=sum(s.progress.studies_done for s in subs),
                total=sum(s.progress.studies_total for s in subs) or None,
                description=f"final: {ended}/{len(subs)} ended",
            )
            if ended == len(subs):
                return
            if timeout and time.monotonic() - started > timeout:
                fail(
                    f"gave up after {timeout:.0f} s; {len(subs) - ended} final submission(s) still scoring", 1
                )
            time.sleep(0.5)


def _print_board(rows: list[dict[str, Any]]) -> None:
    if not rows:
        _say("no final submission is scored")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="final leaderboard")
    for column in ("rank", "team", "score", "95% interval", "rank holds", "studies", "submission", "from"):
        table.add_column(column, justify="left" if column in ("team", "submission", "from") else "right")
    for row in rows:
        table.add_row(
            str(row["rank"]),
            plain(row["team"]),
            f"{row['score']:.3f}",
            f"{row['ci_low']:.3f} - {row['ci_high']:.3f}",
            f"{row['rank_stability']:.0%}",
            str(row["studies"]),
            row["submission"],
            row["source"] or "",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
