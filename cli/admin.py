"""`bbo admin`: the organizers' commands. They call `competition` directly, never the gateway."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import typer

from cli import (
    admin_team,
    archive_cmd,
    audit_cmd,
    autoscaler_cmd,
    baselines_cmd,
    console_cmd,
    demo_cmd,
    estimate_cmd,
    final_cmd,
    reproduce_cmd,
    sandbox_cmd,
    submissions_cmd,
    up,
)
from cli.output import emit_json, err, fail, guard_service_output, plain, stdout_to_stderr, studies_progress
from runtime.supervisor import Child, stop_children

app = typer.Typer(
    help="Run the competition: serve, workers, teams, baselines, sandbox, score, export.",
    no_args_is_help=True,
)
app.add_typer(baselines_cmd.app, name="baselines")
app.add_typer(admin_team.app, name="team")
app.add_typer(sandbox_cmd.app, name="sandbox")
app.add_typer(autoscaler_cmd.app, name="autoscaler")
app.command("serve")(admin_team.serve_command)
app.command("up")(up.up_command)
app.command("demo")(demo_cmd.demo_command)
app.command("estimate")(estimate_cmd.estimate)
app.command("reproduce")(reproduce_cmd.reproduce_command)
app.command("audit")(audit_cmd.audit_command)
app.command("disqualify")(audit_cmd.disqualify_command)
app.command("requalify")(audit_cmd.requalify_command)
app.command("refund")(audit_cmd.refund_command)
app.command("rescore")(final_cmd.rescore_command)
app.command("final")(final_cmd.final_command)
app.command("submissions")(submissions_cmd.submissions_command)
app.command("stop")(submissions_cmd.stop_command)
app.command("console")(console_cmd.console_command)
app.command("archive")(archive_cmd.archive_command)

PhaseOpt = typer.Option("feedback", "--phase", help="Which phase's problems to score: feedback or final.")


@app.command()
def score(
    path: Path = typer.Argument(
        ..., help="A starter-kit submission: a folder or a zip with optimizer.py at the top."
    ),
    spec_name: str = typer.Option(
        ..., "--spec", help="Competition spec: a shipped name (demo, neurips2020) or a path."
    ),
    phase: str = PhaseOpt,
    backend: str = typer.Option(
        "auto", "--backend", help="Sandbox: auto (docker, then bwrap), docker, bwrap, process."
    ),
    workers: int = typer.Option(
        os.cpu_count() or 1,
        "--workers",
        min=1,
        help="Worker processes to start for this run (default: core count).",
    ),
    team: str = typer.Option("organizers", "--team", help="Team the submission is recorded under."),
    as_json: bool = typer.Option(False, "--json", help="Print the scored submission as JSON on stdout."),
    timeout: float = typer.Option(0, "--timeout", help="Give up after this many seconds (0: no limit)."),
) -> None:
    """Score one submission end to end: enqueue its jobs on the real queue, run workers, wait, report."""
    from artifacts import archive
    from competition import scores
    from competition.submit import create_submission
    from queue_schema.connection import RedisUnavailable, connect
    from runtime import versions
    from runtime.redis_server import ensure_redis
    from runtime.spec import SpecError, load
    from workers.sandbox import SandboxRefused, SandboxUnavailable, select

    try:
        spec = load(spec_name)
        spec.phase(phase)
        select(backend)  # refuse an unusable or unsafe backend before anything is stored
        data = archive.pack(path, spec.submission)
        archive.check(data, spec.submission)
        versions.baselines_for(spec, required=spec.phase(phase).problems)
    except (
        SpecError,
        SandboxRefused,
        SandboxUnavailable,
        archive.InvalidSubmission,
        versions.BaselineError,
    ) as exc:
        fail(str(exc))
    try:
        # Nothing a worker or a study prints may reach stdout, which holds the report alone.
        with stdout_to_stderr(), ensure_redis() as url:
            r = connect(url)
            sub = create_submission(
                r, team=team, data=data, spec=spec, phase=phase, filename=path.name, backend=backend
            )
            err.print(
                f"submission [bold]{sub.id}[/]: {sub.progress.studies_total} studies on "
                f"{len(spec.phase(phase).problems)} problems ({spec.name}/{phase}), {workers} worker(s)"
            )
            fleet = _start_workers(url, workers)
            try:
                final = _wait(r, sub.id, fleet, timeout)
            finally:
                _stop_workers(fleet)
            report = scores.report(r, final.id)
    except RedisUnavailable as exc:
        fail(str(exc))
    if as_json:
        emit_json(report)
    else:
        _print_report(report)


def _start_workers(url: str, count: int) -> list[Child]:
    env = {**os.environ, "BBO_REDIS_URL": url}
    workers = [
        Child(f"worker-{i}", [sys.executable, "-m", "cli", "admin", "worker"], env) for i in range(count)
    ]
    for worker in workers:
        worker.start()
    return workers


def _stop_workers(workers: list[Child]) -> None:
    stop_children(workers, timeout=15)  # RQ's warm shutdown: finish nothing new, exit


def _wait(r, sid: str, workers: list[Child], timeout: float):
    from queue_schema.records import load_submission
    from queue_schema.states import TERMINAL_STATES

    started = time.monotonic()
    with studies_progress() as progress:
        task = progress.add_task("studies", total=None, score="")
        while True:
            sub = load_submission(r, sid)
            running = f"running score {sub.partial_score:.2f}" if sub.partial_score is not None else ""
            progress.update(
                task,
                completed=sub.progress.studies_done,
                total=sub.progress.studies_total,
                description=sub.state.value,
                score=running,
            )
            if sub.state in TERMINAL_STATES:
                return sub
            if not any(worker.alive for worker in workers):
                fail(
                    "every worker exited before the submission finished; see the worker output above", code=1
                )
            if timeout and time.monotonic() - started > timeout:
                fail(f"gave up after {timeout:.0f} s; submission {sid} is still {sub.state.value}", code=1)
            time.sleep(0.25)


def _print_report(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{report['id']}  {report['state']}", show_lines=False)
    for column in ("problem", "clip", "opt", "score", "studies"):
        table.add_column(column, justify="right" if column != "problem" else "left")
    for row in report.get("problems", []):
        score = "" if row["score"] is None else f"{row['score']:.3f}"
        table.add_row(
            plain(row["problem"]), f"{row['clip']:.5g}", f"{row['opt']:.5g}", score, str(len(row["studies"]))
        )
    err.print(table)
    if report.get("failure"):
        failure = report["failure"]
        err.print(f"[red]failed[/]: {failure['cause']}: {plain(failure['message'])}", soft_wrap=True)
    score = report.get("score")
    typer.echo(f"score: {score:.4f}" if score is not None else f"state: {report['state']}")


@app.command()
def worker(
    burst: bool = typer.Option(False, "--burst", help="Exit when the queues are empty."),
    name: str = typer.Option(None, "--name", help="Worker name (default: bbo-HOST-PID)."),
) -> None:
    """Run a scoring worker against BBO_REDIS_URL (or the embedded Redis)."""
    guard_service_output()
    from queue_schema.connection import RedisUnavailable, ping
    from workers.worker import run_worker

    try:
        ping()
    except RedisUnavailable as exc:
        fail(f"{exc}; start `bbo admin up` or set BBO_REDIS_URL")
    run_worker(burst=burst, name=name)


@app.command()
def redis() -> None:
    """Run the embedded Redis in the foreground (the Procfile's store when BBO_REDIS_URL is unset)."""
    from queue_schema.connection import RedisUnavailable, ping
    from runtime.redis_server import EmbeddedRedis

    try:
        ping()
        fail("a Redis already answers at the embedded socket")
    except RedisUnavailable:
        pass
    # Blocked before the server starts, so a SIGTERM is waited for, not fatal (which would orphan it).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server = EmbeddedRedis()
    server.start()
    err.print(f"embedded Redis at {server.url} (data in {server.directory}); Ctrl-C to stop")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


@app.command()
def export(
    submission: str = typer.Argument(..., help="Submission id."),
    directory: Path = typer.Argument(..., help="Folder to write into (created)."),
    fmt: str = typer.Option(
        "auto",
        "--format",
        help="bayesmark (its own on-disk database, for bayesmark's problems), json (docs/export.md), or "
        "auto: bayesmark where every problem is bayesmark's, json otherwise.",
    ),
    version: int = typer.Option(0, "--version", help="Score version (default: the current one)."),
) -> None:
    """Write a submission's study data: bayesmark's own format for its own analysis tools, or JSON."""
    from competition import scores
    from queue_schema.connection import RedisUnavailable, connect
    from runtime import versions
    from runtime.redis_server import ensure_redis

    try:
        with ensure_redis() as url:
            path = scores.export(connect(url), submission, directory, version or None, fmt)
    except (RedisUnavailable, versions.ScoreError) as exc:
        fail(str(exc))
    err.print(f"wrote the studies to {path}")
