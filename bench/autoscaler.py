"""Autoscaler figures: a burst of submissions takes the local fleet from 0 workers to the cap and back to 0.

Everything runs against real parts in a temporary state folder (an embedded Redis of its own, never the
user's): the autoscaler daemon (autoscaler/daemon.py, in a thread of this process, stepping every
--interval seconds) with the `local` provider, which starts real `bbo admin worker` processes. A burst of
demo submissions is enqueued at once; the benchmark watches the provider's machines, the workers'
heartbeats and the jobs, and stops once the queue is empty, every job is done and no machine is left.

- first_worker_s: from the burst's first enqueue to the first worker heartbeat (daemon step + process
  start + the scoring stack's imports).
- drain_s: from the last job's end (RQ's ended_at) to the provider listing no machine (idle time before
  a drain, the scale-down cooldown, the warm shutdown).
- worker_seconds_ratio: the machines' lifetimes (created to exited, summed) over the busy lower bound,
  the summed run times of the jobs (RQ's started_at to ended_at): what the fleet cost against the least
  it could have cost.
- peak_workers (against cap), jobs, lost_jobs (neither finished nor failed: must be 0), killed_jobs
  (jobs requeued or abandoned after their worker was killed or went silent: 0 in a healthy run).

With the default `process` backend the workers run studies without isolation, with
BBO_ALLOW_UNSAFE_SANDBOX=1 set for them only (the output says so).

    python -m bench autoscaler --json [--submissions N] [--cap N] [--idle-before-drain-s S]
"""

from __future__ import annotations

from queue_schema.settings import pin_threads

pin_threads()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

from bench.common import embedded_store, logger, print_figures, scratch_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "submissions"
FLEET = "bench"
POLL_S = 0.2


_log = logger("autoscaler")


@dataclass
class MachineLife:
    """One machine as the benchmark saw it: created by the provider, exited (or deleted) later."""

    name: str
    created_at: float
    process: psutil.Process | None
    exited_at: float | None = None

    def check(self, now: float) -> None:
        if self.exited_at is not None:
            return
        try:
            # A drained worker that exited is a zombie until the provider collects it: gone all the same.
            alive = self.process is not None and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive:
            self.exited_at = now


class Watcher:
    """Follows the fleet from outside the daemon: the provider's records (written as it creates machines)
    joined with the process table, and the workers' heartbeats."""

    def __init__(self, r: Any) -> None:
        from autoscaler.providers.base import machines_key

        self.r = r
        self.key = machines_key("local", FLEET)
        self.machines: dict[str, MachineLife] = {}
        self.first_heartbeat_at: float | None = None
        self.peak_workers = 0
        self.peak_joined = 0

    def poll(self) -> int:
        """Record what changed; return the machines alive now."""
        from runtime import recovery

        now = time.time()
        for name, raw in self.r.hgetall(self.key).items():
            if name in self.machines:
                continue
            record = json.loads(raw)
            try:
                process: psutil.Process | None = psutil.Process(int(record["pid"]))
            except psutil.Error:
                process = None
            self.machines[name] = MachineLife(name, float(record["created_at"]), process)
        for machine in self.machines.values():
            machine.check(now)
        alive = sum(1 for m in self.machines.values() if m.exited_at is None)
        joined = len(recovery.workers(self.r))
        if joined and self.first_heartbeat_at is None:
            self.first_heartbeat_at = now
        self.peak_workers = max(self.peak_workers, alive)
        self.peak_joined = max(self.peak_joined, joined)
        return alive

    def worker_seconds(self, until: float) -> float:
        return sum((m.exited_at or until) - m.created_at for m in self.machines.values())


def _demo_burst(r: Any, count: int, teams: int) -> list[Any]:
    """`count` demo submissions from `teams` teams (in turn), enqueued back to back."""
    from artifacts import archive
    from competition.submit import create_submission
    from runtime.spec import load

    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    return [
        create_submission(
            r,
            team=f"team-{i % teams}",
            data=data,
            spec=spec,
            phase="feedback",
            backend="process",
            check_baselines=False,
        )
        for i in range(count)
    ]


def _timestamp(value: datetime.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # RQ writes UTC
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def _jobs(r: Any, subs: list[Any]) -> dict[str, Any]:
    """The burst's jobs from RQ: how many, how they ended, and their run times."""
    from rq.job import Job, JobStatus

    from queue_schema.connection import rq_connection
    from queue_schema.records import read_events
    from runtime.enqueue import expected_jobs
    from runtime.spec import load

    spec = load("demo")
    ids = [jid for sub in subs for jid in expected_jobs(sub, spec)]
    jobs = Job.fetch_many(ids, connection=rq_connection())
    busy = 0.0
    ends: list[float] = []
    finished = failed = 0
    for job in jobs:
        status = job.get_status(refresh=False) if job is not None else None
        if status not in (JobStatus.FINISHED, JobStatus.FAILED):
            continue
        finished += status == JobStatus.FINISHED
        failed += status == JobStatus.FAILED
        started, ended = _timestamp(job.started_at), _timestamp(job.ended_at)
        if started is not None and ended is not None:
            busy += ended - started
            ends.append(ended)
    killed = sum(
        1
        for sub in subs
        for event in read_events(r, sub.id, count=10_000)
        if event.kind in ("job_requeued", "job_abandoned")
    )
    return {
        "jobs": len(ids),
        "finished_jobs": finished,
        "failed_jobs": failed,
        "lost_jobs": len(ids) - finished - failed,
        "killed_jobs": killed,
        "busy_s": busy,
        "last_job_ended_at": max(ends) if ends else None,
    }


def run(r: Any, args: argparse.Namespace) -> dict[str, Any]:
    from autoscaler.daemon import Daemon, read_status
    from autoscaler.policy import PolicyConfig
    from autoscaler.providers.local import LocalProvider
    from queue_schema.records import load_submission
    from queue_schema.states import TERMINAL_STATES
    from runtime import dispatch

    env = {**os.environ, "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    provider = LocalProvider(r, fleet=FLEET, cap=args.cap, env=env)
    config = PolicyConfig(
        min_workers=0,
        max_workers=args.cap,
        scale_up_cooldown_s=args.interval,
        scale_down_cooldown_s=args.scale_down_cooldown_s,
        idle_before_drain_s=args.idle_before_drain_s,
        boot_timeout_s=300.0,
    )
    daemon = Daemon(r, provider, config, fleet=FLEET, interval_s=args.interval)
    stop = threading.Event()
    loop = threading.Thread(target=daemon.run, args=(stop,), name="autoscaler", daemon=True)
    watcher = Watcher(r)
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while not read_status(r, FLEET):  # one step on an empty queue: the fleet starts from nothing
            if time.monotonic() > deadline or not loop.is_alive():
                raise SystemExit("bench autoscaler: the daemon did not step within 30 s")
            time.sleep(POLL_S)
        if watcher.poll():
            raise SystemExit("bench autoscaler: the fleet did not start empty")

        burst_at = time.time()
        subs = _demo_burst(r, args.submissions, args.teams)
        _log(
            f"burst: {len(subs)} demo submissions ({dispatch.queue_depths(r)['queued']} jobs) enqueued in "
            f"{time.time() - burst_at:.2f} s; cap {args.cap}"
        )
        deadline = time.monotonic() + args.timeout
        last_line = ""
        drained_at: float | None = None
        while True:
            alive = watcher.poll()
            depths = dispatch.queue_depths(r)
            done = sum(load_submission(r, sub.id).state in TERMINAL_STATES for sub in subs)
            line = (
                f"{alive} workers ({len(watcher.machines)} started), "
                f"{depths['queued']} queued, {depths['running']} running, {done}/{len(subs)} submissions done"
            )
            if line != last_line:
                _log(f"t+{time.time() - burst_at:6.1f} s: {line}")
                last_line = line
            if done == len(subs) and not depths["queued"] and not depths["running"] and not alive:
                drained_at = time.time()
                break
            if not loop.is_alive():
                raise SystemExit(f"bench autoscaler: the daemon stopped: {line}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench autoscaler: not back to 0 workers within {args.timeout:g} s: {line}")
            time.sleep(POLL_S)
        status = read_status(r, FLEET)
    finally:
        stop.set()
        loop.join(30)
        for machine in provider.list():  # only after a failure: a finished run has none left
            provider.delete(machine.name)

    jobs = _jobs(r, subs)
    if jobs["lost_jobs"] or jobs["killed_jobs"]:
        _log(f"warning: {jobs['lost_jobs']} job(s) lost, {jobs['killed_jobs']} requeued after a kill")
    states = [load_submission(r, sub.id).state.value for sub in subs]
    busy = jobs.pop("busy_s")
    last_end = jobs.pop("last_job_ended_at")
    worker_s = watcher.worker_seconds(drained_at)
    first = watcher.first_heartbeat_at
    return {
        "first_worker_s": round(first - burst_at, 2) if first is not None else None,
        "drain_s": round(drained_at - last_end, 2) if last_end is not None else None,
        "worker_seconds_ratio": round(worker_s / busy, 3) if busy else None,
        "peak_workers": watcher.peak_workers,
        "peak_joined_workers": watcher.peak_joined,
        "cap": args.cap,
        **jobs,
        "submissions": len(subs),
        "scored": states.count("scored"),
        "worker_s": round(worker_s, 1),
        "busy_s": round(busy, 1),
        "machines_started": len(watcher.machines),
        "burst_to_zero_s": round(drained_at - burst_at, 1),
        "machine_hours_daemon": status.get("machine_hours"),
        "interval_s": args.interval,
        "idle_before_drain_s": args.idle_before_drain_s,
        "scale_down_cooldown_s": args.scale_down_cooldown_s,
        "backend": "process",
        "unsafe_sandbox_for_workers": True,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench autoscaler", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--submissions", type=int, default=6, help="demo submissions in the burst (4 jobs each; default 6)"
    )
    parser.add_argument("--teams", type=int, default=3, help="teams the burst comes from (default 3)")
    parser.add_argument(
        "--cap", type=int, default=os.cpu_count() or 1, help="the local fleet's cap (default: the core count)"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between daemon steps")
    parser.add_argument(
        "--idle-before-drain-s", type=float, default=5.0, help="idle this long before a worker is drained"
    )
    parser.add_argument(
        "--scale-down-cooldown-s", type=float, default=5.0, help="seconds between two scale-downs"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="give up if not back to 0 workers by then (s)"
    )
    args = parser.parse_args(argv)
    if args.submissions < 1 or args.cap < 1 or args.teams < 1:
        parser.error("--submissions, --teams and --cap take a positive number")

    from queue_schema.connection import connect

    _log("workers run studies with --backend process and BBO_ALLOW_UNSAFE_SANDBOX=1 (no isolation)")
    with scratch_state("bbo-bench-autoscaler-"), embedded_store() as server:
        figures = run(connect(server.url), args)
    print_figures(figures, args.json, width=24)
