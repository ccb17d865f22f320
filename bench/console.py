"""Organizer console figures at competition scale: start-up, refresh tick, memory.

A fresh embedded store is seeded with the full data set (`python -m bench seed-data`, in a subprocess so
that its memory is not counted here: 3,608 submissions of 70 teams, 108,240 jobs), then the console
(`console.app.ConsoleApp`) runs headless in this process (`app.run_test()`):

- start_s: from constructing the app to `app.ready` (the first full load on screen). Target <= 2 s.
- tick_p95_ms: the UI thread's time applying one refresh (`app.tick_ms`), over at least `--ticks` ticks
  while a writer applies realistic traffic at `--rate` updates a second: studies finishing on running
  submissions (with their events), queued ones starting, running ones scored, failing or stopped, new
  uploads, worker heartbeats. Every update goes through the project's own functions. Target <= 50 ms.
  The writer is a separate process by default, as the workers and the gateway are: a thread here would
  charge its own Python work to the UI thread's ticks through the GIL (`--writer thread` measures that).
- memory_mb: this process's RSS once the console is loaded minus just before the app was created
  (imports done); `rss_mb` is the total. Target <= 300 MB.

    python -m bench console --json [--submissions 3608] [--teams 70] [--ticks 60] [--rate 30]
        [--refresh-s 1.0] [--writer process|thread] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import multiprocessing
import os
import pstats
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from artifacts import archive
from bench import seed_data
from bench.common import embedded_store, print_figures, scratch_state
from bench.seed_data import FAILURE_MESSAGES, beat_worker, study_result
from competition import service
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import connect, reset_clients
from queue_schema.records import transition, write_study
from queue_schema.states import SubmissionState
from runtime import lifecycle, versions

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"start_s": 2.0, "tick_p95_ms": 50.0, "memory_mb": 300.0}
HEARTBEAT_EVERY_S = 5.0


def log(message: str) -> None:
    print(f"bench console: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


# -- the traffic ------------------------------------------------------------------------------------


class Traffic:
    """What the fleet and the teams do to the store while an organizer watches, one update at a time."""

    def __init__(self, url: str, seed: int) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.rng = random.Random(seed)
        self.spec = seed_data.seed_spec()
        self.baselines = versions.baselines_for(self.spec)
        self.order = [
            (problem, study) for problem, _, studies in seed_data.job_order(self.spec) for study in studies
        ]
        ids = self.r.zrange(keys.submissions_index(), 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(keys.submission(sid), "state", "record")
        self.queued: list[str] = []
        self.running: list[str] = []
        self.teams: dict[str, str] = {}
        for sid, (state, record) in zip(ids, pipe.execute(), strict=True):
            self.teams[sid] = json.loads(record)["team"]
            if state == "queued":
                self.queued.append(sid)
            elif state == "running":
                self.running.append(sid)
        self.team_names = sorted(set(self.teams.values()))
        self.workers = self.r.zrange(keys.heartbeats_index(), 0, -1)
        self.upload = archive.pack(seed_data.OPTIMIZER.parent, self.spec.submission)
        # Mostly studies finishing (what a busy fleet writes most); uploads are the rarest and dearest.
        self.actions = [
            (self.study, 88),
            (self.start, 4),
            (self.score, 4),
            (self.fail, 1),
            (self.stop, 1),
            (self.submit, 2),
        ]
        self._last_beat = 0.0

    def step(self) -> str:
        if time.monotonic() - self._last_beat > HEARTBEAT_EVERY_S:
            self.beat()
        action = self.rng.choices([a for a, _ in self.actions], [w for _, w in self.actions])[0]
        return action() or self.study() or "idle"

    def beat(self) -> None:
        """The workers' and their jobs' heartbeats, refreshed as workers do (they lapse otherwise)."""
        pipe = self.r.pipeline(transaction=False)
        for worker in self.workers:
            job = self.r.hget(keys.heartbeat(worker), "job") or f"{worker}-idle"
            beat_worker(pipe, worker, job, 0)
        pipe.execute()
        self._last_beat = time.monotonic()

    def study(self) -> str | None:
        if not self.running:
            return None
        sid = self.rng.choice(self.running)
        done = int(self.r.hget(keys.submission(sid), "studies_done") or 0)
        if done >= len(self.order):
            return self.score(sid)
        problem, study = self.order[done]
        result = study_result(self.rng, self.spec, self.baselines, problem, study, 0.2, time.time())
        normalized = versions.study_normalized(self.baselines, problem, result, self.spec.rounds)
        write_study(self.r, sid, 1, problem, result, normalized)
        return "study"

    def start(self) -> str | None:
        if not self.queued:
            return None
        sid = self.queued.pop(0)
        transition(self.r, sid, SubmissionState.RUNNING, version=1, only_from=[SubmissionState.QUEUED])
        self.running.append(sid)
        return "start"

    def score(self, sid: str | None = None) -> str | None:
        """What versions.finalize_if_complete writes once the last job of a version is done."""
        if sid is None:
            if len(self.running) < 5:
                return None
            sid = self.rng.choice(self.running)
        self.running.remove(sid)
        score, now = self.rng.uniform(60, 99), time.time()
        self.r.hset(
            keys.score_version(sid, 1),
            mapping={"score": repr(score), "spec_hash": self.spec.hash, "scored_at": repr(now)},
        )
        only = [SubmissionState.RUNNING, SubmissionState.QUEUED]
        transition(self.r, sid, SubmissionState.SCORED, version=1, only_from=only, score=score, scored_at=now)
        return "score"

    def fail(self) -> str | None:
        if len(self.running) < 5:
            return None
        sid = self.rng.choice(self.running)
        self.running.remove(sid)
        cause = self.rng.choice(list(FAILURE_MESSAGES))
        lifecycle.fail(self.r, sid, 1, cause, FAILURE_MESSAGES[cause])
        return "fail"

    def stop(self) -> str | None:
        pool = self.queued if len(self.queued) > 5 else self.running
        if len(pool) < 5:
            return None
        sid = pool.pop(self.rng.randrange(len(pool)))
        try:
            service.stop(self.r, sid, by_team=self.teams[sid])
        except service.ServiceError:
            return None
        return "stop"

    def submit(self) -> str | None:
        team = self.rng.choice(self.team_names)
        sub = create_submission(
            self.r, team=team, data=self.upload, spec=self.spec, phase="feedback", backend="docker"
        )
        self.teams[sub.id] = team
        self.queued.append(sub.id)
        return "submit"


def write_traffic(url: str, rate: float, seed: int, ready: Any, go: Any, stop: Any, applied: Any) -> None:
    """Once `go` is set, apply `rate` updates a second until `stop` is, counting them in `applied` (a
    process or a thread runs this; behind schedule, it catches up at once rather than dropping any)."""
    os.environ["BBO_REDIS_URL"] = url
    reset_clients()
    traffic = Traffic(url, seed)
    ready.set()
    go.wait()
    due = time.monotonic()
    while not stop.is_set():
        traffic.step()
        with applied.get_lock():
            applied.value += 1
        due += 1.0 / rate
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)


class Writer:
    """The traffic's process (or thread), started before the console so that it is ready to go: Textual's
    headless driver leaves no file descriptors a new process could inherit."""

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        context = multiprocessing.get_context("spawn")
        thread = args.writer == "thread"
        self.ready = threading.Event() if thread else context.Event()
        self.go = threading.Event() if thread else context.Event()
        self.stop = threading.Event() if thread else context.Event()
        self.applied = context.Value("i", 0)
        run = (url, args.rate, args.seed, self.ready, self.go, self.stop, self.applied)
        if thread:
            self.runner: Any = threading.Thread(target=write_traffic, args=run, daemon=True)
        else:
            self.runner = context.Process(target=write_traffic, args=run, daemon=True)
        self.runner.start()
        # Its start-up (reading every submission) must not overlap the console's being measured.
        if not self.ready.wait(120):
            raise SystemExit("bench console: the traffic writer did not start within 120 s")

    def join(self, timeout: float) -> None:
        self.stop.set()
        self.go.set()
        self.runner.join(timeout)
        if isinstance(self.runner, multiprocessing.process.BaseProcess) and self.runner.is_alive():
            self.runner.kill()


# -- the console ------------------------------------------------------------------------------------


async def drive(app: Any, args: argparse.Namespace, writer: Writer, created: float) -> dict[str, Any]:
    """Run the app headless: wait for its first load, then for `--ticks` refreshes under traffic."""
    figures: dict[str, Any] = {}
    async with app.run_test(size=(200, 60)) as pilot:
        deadline = time.perf_counter() + 120
        while not app.ready.is_set():
            if time.perf_counter() > deadline:
                raise SystemExit("bench console: the console was not ready within 120 s")
            await asyncio.sleep(0.005)
        figures["start_s"] = round(time.perf_counter() - created, 3)
        await pilot.pause()
        figures["rss_loaded_mb"] = rss_mb()
        log(f"ready in {figures['start_s']} s with {len(app.rows)} rows; traffic at {args.rate}/s")
        writer.go.set()
        first = len(app.tick_ms)
        started = time.perf_counter()
        deadline = started + args.ticks * args.refresh_s * 4 + 60
        while len(app.tick_ms) - first < args.ticks and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        writer.stop.set()
        writer.join(30)
        ticks = app.tick_ms[first:]
        figures |= {
            "tick_p95_ms": round(percentile(ticks, 95), 2),
            "tick_p50_ms": round(percentile(ticks, 50), 2),
            "tick_max_ms": round(max(ticks, default=float("nan")), 2),
            "ticks": len(ticks),
            "updates_applied": writer.applied.value,
            "updates_per_s": round(writer.applied.value / elapsed, 1),
            "rows": len(app.rows),
            "rss_after_ticks_mb": round(rss_mb(), 1),
        }
    return figures


def profile_ticks(app: Any) -> cProfile.Profile:
    """Profile only what the UI thread does per refresh (the app's `_apply`), to see where ticks go."""
    profiler = cProfile.Profile()
    apply = app._apply

    def profiled(*args: Any) -> None:
        profiler.enable()
        try:
            apply(*args)
        finally:
            profiler.disable()

    app._apply = profiled
    return profiler


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from console.app import ConsoleApp

    r = connect(url)
    writer = Writer(url, args)
    try:
        gc.collect()
        before = rss_mb()
        created = time.perf_counter()
        app = ConsoleApp(r, readonly=False, refresh_s=args.refresh_s)
        profiler = profile_ticks(app) if args.profile else None
        figures = asyncio.run(drive(app, args, writer, created))
    finally:
        writer.join(30)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(25)
        log(f"tick profile in {args.profile} (ticks were slower for it)")
    figures["memory_mb"] = round(figures["rss_loaded_mb"] - before, 1)
    figures["rss_mb"] = round(figures.pop("rss_loaded_mb"), 1)
    figures["rss_before_app_mb"] = round(before, 1)
    return figures


def measure_data(url: str) -> dict[str, Any]:
    """console/data.py alone: one full load and one poll, off any UI."""
    from console.data import ConsoleData

    data = ConsoleData(connect(url))
    started = time.perf_counter()
    rows = data.load()
    loaded = time.perf_counter()
    changes = data.poll()
    return {
        "data_load_s": round(loaded - started, 3),
        "data_poll_ms": round((time.perf_counter() - loaded) * 1000, 2),
        "data_rows": len(rows),
        "data_poll_rows": len(changes.rows),
    }


def seed_store(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The full data set, seeded by `python -m bench seed-data` in a process of its own."""
    command = [sys.executable, "-m", "bench", "seed-data", "--json", "--redis-url", url]
    command += ["--submissions", str(args.submissions), "--teams", str(args.teams), "--seed", str(args.seed)]
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench console: seeding failed (exit {done.returncode})")
    return json.loads(done.stdout)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench console", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--submissions", type=int, default=3608)
    parser.add_argument("--teams", type=int, default=70)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ticks", type=int, default=60, help="refreshes measured under traffic")
    parser.add_argument("--rate", type=float, default=30.0, help="updates a second while measuring")
    parser.add_argument("--refresh-s", type=float, default=1.0, help="the console's refresh interval")
    parser.add_argument("--writer", choices=("process", "thread"), default="process")
    parser.add_argument("--profile", default=None, help="write a cProfile of the ticks here (slows them)")
    args = parser.parse_args(argv)

    with scratch_state("bbo-bench-console-"), embedded_store() as server:
        log(f"seeding {args.submissions} submissions of {args.teams} teams")
        seeded = seed_store(server.url, args)
        log(f"seeded in {seeded['seconds']} s ({seeded['used_memory_mb']} MB in Redis)")
        try:
            import console.app  # noqa: F401 - imported before the baseline: the console's code is not its data
        except ImportError as exc:  # the console is not there: its data layer alone, if that is
            log(f"no console app ({exc}); measuring console/data.py alone")
            figures = {}
        else:
            figures = measure(args, server.url)
        figures |= measure_data(server.url)
    figures |= {
        "refresh_s": args.refresh_s,
        "rate": args.rate,
        "writer": args.writer,
        "submissions": seeded["submissions"],
        "teams": seeded["teams"],
        "jobs": seeded["jobs"],
        "seed_seconds": seeded["seconds"],
        "redis_used_memory_mb": seeded["used_memory_mb"],
        "targets": TARGETS,
        "within_targets": {
            name: figures[name] <= limit for name, limit in TARGETS.items() if name in figures
        },
    }
    print_figures(figures, args.json, width=22)
