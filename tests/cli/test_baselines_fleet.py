"""The demo's baselines built on a fleet of two real `bbo admin worker` processes, one of them SIGKILLed
while it runs a unit and replaced, and the command following the build stopped with Ctrl-C and run again:
the file equals the local build's (clip, opt, median, mean and mean_normed of every problem; the version
too), every unit is stored once, and the killed worker's unit went back to the queue through the reaper.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from rq.job import Job
from rq.registry import StartedJobRegistry

from baselines.build import build_baselines, plan_units
from queue_schema import keys, records
from queue_schema.connection import rq_connection
from queue_schema.records import read_events
from runtime import baseline_fleet
from runtime.spec import load
from tests.waiting import wait_for
from tests.worker_processes import gone, start_worker_with, worker_env

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("clip", "opt", "median", "mean", "mean_normed")


def start_build(env: dict[str, str], out: Path, log: Path) -> subprocess.Popen:
    # --out: the session's state folder must not get a demo build shadowing the shipped file.
    command = ["admin", "baselines", "build", "--spec", "demo", "--fleet", "--json", "--out", str(out)]
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", *command],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def running_unit(worker: str) -> str | None:
    """A baseline unit's job the worker has started (RQ's started registry names its worker)."""
    conn = rq_connection()
    for job_id in StartedJobRegistry(keys.PRIORITY_QUEUE, connection=conn).get_job_ids(cleanup=False):
        job = Job.fetch(job_id, connection=conn)
        if job.worker_name == worker and job_id.startswith("bl-"):
            return job_id
    return None


@pytest.mark.system
def test_the_demo_built_on_a_fleet_with_a_worker_killed_equals_the_local_build(
    r, redis_server, state_dir, tmp_path
):
    demo = load("demo")
    plan = demo.baseline_plan()
    bid = baseline_fleet.build_id(plan)
    total = len(plan_units(plan))
    env = worker_env(redis_server, state_dir)
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "fleet.json"
    workers = [
        start_worker_with("bl-one", env, logs / "one.log"),
        start_worker_with("bl-two", env, logs / "two.log"),
    ]
    follower = start_build(env, out, logs / "build-1.log")
    try:
        # Kill the first worker in the middle of a unit (the strong runs come first: seconds each).
        victim = wait_for(lambda: running_unit("bl-one"), 120, "bl-one to run a unit", logs)
        tree = psutil.Process(workers[0].pid).children(recursive=True)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        wait_for(lambda: all(gone(p) for p in tree), 20, "bl-one's work horse to die with it", logs)
        assert not records.unit_stored(r, bid, Job.fetch(victim, connection=rq_connection()).args[0]["unit"])
        workers.append(start_worker_with("bl-three", env, logs / "three.log"))

        # Ctrl-C on the command: the build goes on on the fleet.
        wait_for(lambda: records.build_progress(r, bid).done >= 20, 180, "20 units stored", logs)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(30) == 130
        assert "goes on on the fleet" in (logs / "build-1.log").read_text()

        # The same command again resumes (nothing enqueued twice) and writes the file.
        follower = start_build(env, out, logs / "build-2.log")
        stdout, _ = follower.communicate(timeout=420)
        assert follower.returncode == 0, (logs / "build-2.log").read_text()[-2000:]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # warm shutdown
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    printed = json.loads(stdout)
    assert printed["path"] == str(out)
    fleet_info = printed["fleet"]
    assert fleet_info["build_id"] == bid and fleet_info["units"] == total
    assert fleet_info["enqueued"] == 0 and fleet_info["stored_before"] >= 20  # resumed, nothing re-enqueued
    requeued = [e for e in read_events(r, count=1000) if e.kind == "job_requeued"]
    assert [(e.data["job"], e.data["worker"]) for e in requeued] == [(victim, "bl-one")]  # that unit only
    assert r.hlen(keys.baseline_units(bid)) == total
    progress = records.build_progress(r, bid)
    assert progress.written_at is not None and progress.path == str(out)

    fleet = json.loads(out.read_text())
    local = build_baselines(plan, workers=2)
    for problem in demo.all_problems():
        for figure in FIGURES:
            assert fleet["problems"][problem][figure] == local["problems"][problem][figure], (problem, figure)
    assert fleet["problems"] == local["problems"] and fleet["version"] == local["version"]
