"""`bbo admin autoscaler ...`: size the worker fleet from the queue (`simulate` replays a competition
through the same policy code in simulated time)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cli.output import emit_json, err, fail, guard_service_output, plain

app = typer.Typer(help="Size the worker fleet: run the daemon, simulate a competition.", no_args_is_help=True)


def _default_plot(trace: str) -> Path:
    from queue_schema.settings import state_dir

    return state_dir() / "autoscaler" / f"simulate-{trace}.png"


@app.command("simulate")
def simulate_command(
    trace: str = typer.Option(
        "seed", "--trace", help="Trace to replay: seed (NeurIPS 2020 as its post tells)."
    ),
    submissions: int | None = typer.Option(
        None, "--submissions", min=1, help="Submissions in the trace (default: the trace's own, 3608)."
    ),
    days: float | None = typer.Option(None, "--days", min=0.01, help="Length of the trace in days."),
    teams: int | None = typer.Option(None, "--teams", min=1, help="Teams in the trace (default 70)."),
    compute_years: float | None = typer.Option(
        None, "--compute-years", min=0.0, help="Total job time (default: 10.36 pro rata to submissions)."
    ),
    shape: str = typer.Option(
        "cost", "--durations", help="Job durations: cost (per-problem cost table) or flat (all the mean)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed of the trace (default 2020)."),
    cap: int = typer.Option(300, "--cap", min=1, help="The fleet's safety cap (max_workers)."),
    boot_s: float = typer.Option(120.0, "--boot-s", min=0.0, help="Seconds from create to a serving worker."),
    step_s: float = typer.Option(30.0, "--step-s", min=0.1, help="Simulated seconds between policy steps."),
    min_workers: int = typer.Option(0, "--min-workers", min=0, help="Workers kept even when idle."),
    jobs_per_worker: int = typer.Option(1, "--jobs-per-worker", min=1, help="Jobs one worker runs at once."),
    backlog_per_worker: float = typer.Option(
        1.5,
        "--backlog-per-worker",
        min=1.0,
        help="Jobs (queued + running) per worker: 1 a worker per job; 1.5 (the default here, for "
        "cloud machines that take minutes to boot) two workers per three jobs.",
    ),
    scale_up_cooldown_s: float = typer.Option(10.0, "--scale-up-cooldown-s", min=0.0),
    scale_down_cooldown_s: float = typer.Option(60.0, "--scale-down-cooldown-s", min=0.0),
    idle_before_drain_s: float = typer.Option(
        60.0, "--idle-before-drain-s", min=0.0, help="Idle this long before a worker may be drained."
    ),
    budget: float | None = typer.Option(
        None, "--budget-machine-hours", min=0.0, help="Add no machine once this many are spent."
    ),
    max_add_per_step: int | None = typer.Option(
        None, "--max-add-per-step", min=1, help="Machines created per step at most (a provider's rate)."
    ),
    quota: int | None = typer.Option(
        None, "--quota", min=0, help="The provider refuses machines beyond this many (a quota refusal)."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="PNG to write (default: $BBO_STATE_DIR/autoscaler/simulate-TRACE.png)."
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no plot."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Replay a competition trace through the autoscaling policy in simulated time; print time to score,
    machine-hours against busy machine-hours, peak workers; plot workers and queue over time."""
    from autoscaler import policy, simulator, traces

    if min_workers > cap:
        fail(f"--min-workers {min_workers} is above --cap {cap}")
    overrides = {
        key: value
        for key, value in {
            "submissions": submissions,
            "days": days,
            "teams": teams,
            "compute_years": compute_years,
            "seed": seed,
            "shape": shape,
        }.items()
        if value is not None
    }
    try:
        replay = traces.load(trace, **overrides)
    except ValueError as exc:
        fail(str(exc))
    config = policy.PolicyConfig(
        min_workers=min_workers,
        max_workers=cap,
        jobs_per_worker=jobs_per_worker,
        backlog_per_worker=backlog_per_worker,
        scale_up_cooldown_s=scale_up_cooldown_s,
        scale_down_cooldown_s=scale_down_cooldown_s,
        idle_before_drain_s=idle_before_drain_s,
        budget_machine_hours=budget,
        max_add_per_step=max_add_per_step,
    )
    err.print(
        f"simulating {len(replay.arrivals)} submissions ({replay.jobs} jobs), cap {cap}, boot {boot_s:g}s"
    )
    started = time.monotonic()
    result = simulator.simulate(replay, config, boot_s=boot_s, step_s=step_s, progress=err.print, quota=quota)
    summary = dict(result.summary)
    summary["wall_s"] = round(time.monotonic() - started, 2)
    if not no_plot:
        from autoscaler.plot import write_png

        path = plot or _default_plot(trace)
        try:
            summary["plot"] = str(write_png(result, path))
        except OSError as exc:
            fail(f"cannot write the plot: {exc}")
        err.print(f"plot: {summary['plot']}")
    if as_json:
        emit_json(summary)
        return
    _print(summary)


def _print(summary: dict) -> None:
    hours = 3600
    print(f"submissions        {summary['submissions']} ({summary['jobs']} jobs), scored {summary['scored']}")
    print(
        f"time to score      p50 {summary['p50_time_to_score_s'] / hours:.2f} h, "
        f"p95 {summary['p95_time_to_score_s'] / hours:.2f} h "
        f"(p95 longest job {summary['p95_longest_job_s'] / hours:.2f} h)"
    )
    print(f"fleet delay        p50 {summary['p50_delay_s']:.0f} s, p95 {summary['p95_delay_s']:.0f} s")
    print(
        f"machine-hours      {summary['machine_hours']:,.0f} for {summary['busy_machine_hours']:,.0f} busy "
        f"(x{summary['overhead_ratio']})"
    )
    print(f"peak workers       {summary['peak_workers']} (cap {summary['cap']})")
    if "plot" in summary:
        print(f"plot               {summary['plot']}")


# -- `run`: the daemon (autoscaler/daemon.py) -------------------------------------------------------


@app.command("run")
def run_command(
    provider_name: str = typer.Option(
        "local", "--provider", help="Where workers come from: local, docker, hcloud (docs/autoscaler.md)."
    ),
    provider_options: list[str] = typer.Option(
        [],
        "--provider-option",
        "-o",
        metavar="KEY=VALUE",
        help="A provider setting, repeatable (e.g. -o image=bbo-worker:abc -o server_type=cpx31).",
    ),
    min_workers: int = typer.Option(0, "--min", min=0, help="Workers kept even when the queue is empty."),
    max_workers: int | None = typer.Option(
        None, "--max", min=1, help="The safety cap (default: the core count for local)."
    ),
    interval: float = typer.Option(5.0, "--interval", min=0.1, help="Seconds between steps."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Decide and log, create and stop nothing."),
    json_events: bool = typer.Option(False, "--json-events", help="Print each decision as JSON on stdout."),
    fleet: str = typer.Option("local", "--fleet", help="Fleet name: worker names are FLEET-N."),
    idle_before_drain_s: float = typer.Option(
        60.0, "--idle-before-drain-s", min=0.0, help="Idle this long before a worker may be drained."
    ),
    boot_timeout_s: float = typer.Option(
        600.0, "--boot-timeout-s", min=1.0, help="A machine not joined by then is deleted."
    ),
    budget: float | None = typer.Option(
        None, "--budget-machine-hours", min=0.0, help="Add no machine once this many are spent."
    ),
    backlog_per_worker: float = typer.Option(
        1.0,
        "--backlog-per-worker",
        min=1.0,
        help="Jobs (queued + running) per worker: 1 a worker per job; 1.5 two workers per three jobs.",
    ),
    drain_on_exit: bool = typer.Option(
        False, "--drain-on-exit", help="On stop, drain the workers too (default: leave them running)."
    ),
) -> None:
    """Size the worker fleet from the queue until Ctrl-C: observe the queue and heartbeats, decide, add or
    drain workers, sweep machines that never joined or went silent, requeue their jobs. Each decision is
    an `autoscaler` event (the console shows them). A restarted daemon takes over the running workers."""
    import os
    import signal
    import threading

    import redis

    from autoscaler import policy
    from autoscaler.daemon import Daemon
    from autoscaler.daemon_lock import AnotherDaemonRuns
    from autoscaler.providers import ProviderError, make
    from queue_schema.connection import RedisUnavailable, connect, ping
    from queue_schema.settings import redis_url
    from queue_schema.untrusted import redact_url

    cap = max_workers if max_workers is not None else (os.cpu_count() or 1)
    if min_workers > cap:
        fail(f"--min {min_workers} is above --max {cap}")
    guard_service_output()  # provider and store errors in its lines: made safe, URLs redacted
    try:
        ping()
    except RedisUnavailable as exc:
        fail(f"{exc}; start `bbo admin up` or set BBO_REDIS_URL")
    url = redis_url()
    r = connect(url)
    options: dict[str, str] = {}
    for item in provider_options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--provider-option {item!r} is not KEY=VALUE")
        options[key.replace("-", "_")] = value
    try:
        env = {**os.environ, "BBO_REDIS_URL": url}
        provider = make(provider_name, r=r, fleet=fleet, cap=cap, env=env, **options)
    except ProviderError as exc:
        fail(str(exc))
    config = policy.PolicyConfig(
        min_workers=min_workers,
        max_workers=cap,
        idle_before_drain_s=idle_before_drain_s,
        boot_timeout_s=boot_timeout_s,
        budget_machine_hours=budget,
        backlog_per_worker=backlog_per_worker,
    )

    def show(event: dict) -> None:
        if json_events:
            emit_json(event)
        else:
            err.print(f"[bold]autoscaler[/] {'(dry run) ' if dry_run else ''}{plain(event['reason'])}")

    daemon = Daemon(r, provider, config, fleet=fleet, dry_run=dry_run, interval_s=interval, on_event=show)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    err.print(
        f"autoscaler: provider {provider_name}, fleet {fleet}, {min_workers}..{cap} workers, every "
        f"{interval:g}s{', dry run' if dry_run else ''}; Ctrl-C to stop"
    )
    try:
        daemon.run(stop, drain_on_exit=drain_on_exit)
    except AnotherDaemonRuns as exc:
        fail(str(exc), code=1)
    except redis.RedisError as exc:  # at start-up (later, the loop waits the store out)
        fail(f"the store at {redact_url(redis_url())} did not take the autoscaler's lock: {exc}", code=1)
    err.print("autoscaler stopped" + ("; workers drained" if drain_on_exit else "; workers left running"))


# -- `status`: the daemon's last step (autoscaler.daemon.read_status) --------------------------------


@app.command("status")
def status_command(
    fleet: str = typer.Option("local", "--fleet", help="Fleet to show (as given to `run --fleet`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object on stdout."),
) -> None:
    """Show the autoscaler daemon's last step for a fleet: workers by state, queue, decision, machine-hours,
    provider error. The same figures as the gateway's bbo_autoscaler_* metrics."""
    from autoscaler.daemon import read_status
    from cli.output import with_redis
    from queue_schema import keys

    def read(r) -> tuple[dict, list[str]]:
        return read_status(r, fleet), sorted(r.smembers(keys.autoscaler_fleets()))

    status, fleets = with_redis(read)
    if not status:
        known = f"known fleets: {', '.join(fleets)}" if fleets else "no autoscaler has run on this store"
        fail(f"no autoscaler status for fleet {fleet!r} ({known})", code=1)
    if as_json:
        emit_json(status)
        return
    from queue_schema.untrusted import safe_text

    for line in _status_lines(fleet, status, time.time()):
        print(safe_text(line))  # the decision and the provider's error carry outside text


def _status_lines(fleet: str, status: dict, now: float) -> list[str]:
    workers = status.get("workers") or {}
    states = ("booting", "idle", "busy", "draining")
    counts = ", ".join(f"{workers.get(state, 0)} {state}" for state in states)
    cap = f" (cap {status['cap']})" if status.get("cap") is not None else ""
    ts = float(status.get("ts", 0.0))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    mode = ", dry run" if status.get("dry_run") else ""
    lines = [
        f"fleet          {fleet} (provider {status.get('provider', '?')}{mode})",
        f"last step      {when} ({max(0.0, now - ts):.0f} s ago)",
        f"workers        {sum(workers.values())}: {counts}{cap}",
        f"queue          {status.get('queued', 0)} queued, {status.get('running', 0)} running",
        f"decision       {status.get('reason', '')}{' [held]' if status.get('held') else ''}",
        f"machine-hours  {float(status.get('machine_hours', 0.0)):.3f}",
    ]
    if status.get("error"):
        lines.append(f"provider error {status['error']}")
    return lines


# -- `build-worker-image`: the docker provider's image (autoscaler/providers/docker_image.py) -------


@app.command("build-worker-image")
def build_worker_image_command(
    base: str = typer.Option(
        "auto", "--base", help="Base image, as `bbo admin sandbox build --base` (default: the sandbox's)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the content-tagged image exists."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Build the docker provider's worker image offline (and the sandbox image its studies need), tagged
    bbo-worker:<content hash>; instant when present. Use it with `run --provider docker`."""
    from autoscaler.providers.docker_image import build
    from sandbox_image.build import BuildError

    try:
        record = build(base=base, force=force)
    except BuildError as exc:
        fail(str(exc))
    if as_json:
        emit_json(record)
        return
    verb = "present" if record["reused"] else f"built in {record['build_seconds']:.0f} s"
    err.print(f"{record['tag']} {verb}: {record['size_bytes'] / 1e6:.0f} MB", soft_wrap=True)
