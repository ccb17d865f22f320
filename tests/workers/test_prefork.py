"""Pre-forked work horses with warm sandboxes (workers/prefork.py) in real `bbo admin worker` processes:
after its first job a worker's next jobs take the warm sandbox their horse started while the worker waited
(their logs say so) and score as usual; a worker that boots into an open competition (runtime/warm_hint.py)
has one waiting for its very first job, and an idle worker follows the hint when it changes; a stopped
worker leaves no horse and no sandbox behind, and
neither does a SIGKILLed one; on docker, a warm container is labelled for the sweeps, removed when its
worker stops, and ends with a killed worker, to be removed by the next sweep."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rq import Queue

from artifacts import archive
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import load_submission, read_job_log
from runtime import recovery, warm_hint
from runtime.spec import load
from tests.conftest import SUBMISSIONS
from tests.waiting import wait_for
from tests.worker_processes import start_worker

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.system


def submit(r, backend: str):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    return create_submission(r, team="t", data=data, spec=spec, phase="feedback", backend=backend)


def scored(r, sid: str) -> bool:
    sub = load_submission(r, sid)
    assert sub.state.value not in ("failed", "stopped"), sub.failure
    return sub.state.value == "scored"


def warm_processes(state: Path) -> list[int]:
    """Live processes of warm hosts started under this state folder (a warm host's argv says --warm)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--warm" in argv and any(str(state).encode() in part for part in argv):
            found.append(int(entry.name))
    return found


def job_logs(r, sid: str) -> list[str]:
    return ["\n".join(read_job_log(r, job_id)) for job_id in sorted(r.smembers(keys.submission_jobs(sid, 1)))]


def test_a_worker_s_next_jobs_take_the_warm_sandbox_and_a_stop_leaves_nothing(r, redis_server, state_dir):
    worker = start_worker("prefork-stop", redis_server, state_dir, state_dir / "worker.log")
    try:
        sub = submit(r, "process")
        wait_for(lambda: scored(r, sub.id), timeout=240, what="the submission scored")
        logs = job_logs(r, sub.id)
        # Four jobs, one after the other: the first starts cold, the others find a warm sandbox.
        assert sum("takes the warm process sandbox" in log for log in logs) >= len(logs) - 1, logs
        # Every run ended as RQ's own horses end theirs: nothing left started for the reaper to take for
        # dead (a horse forked during the previous job once left each of its runs there, requeued later).
        for queue in Queue.all(connection=rq_connection()):
            assert queue.started_job_registry.get_job_ids(cleanup=False) == [], queue.name
        report = recovery.reap(r, now=time.time() + 3600)
        assert not report.requeued and not report.failed, report
        # Idle now, with the next job's horse and its warm sandbox waiting.
        wait_for(lambda: warm_processes(state_dir), timeout=30, what="a warm sandbox while idle")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        wait_for(lambda: not warm_processes(state_dir), timeout=15, what="the warm sandbox gone")
    finally:
        worker.kill()


def test_a_worker_booted_into_an_open_competition_warms_its_first_job_and_follows_a_new_one(
    r, redis_server, state_dir
):
    import dataclasses

    limits = load("demo").limits
    warm_hint.record(r, "process", limits)  # what the competition's gateway records as it starts
    worker = start_worker("prefork-boot", redis_server, state_dir, state_dir / "worker.log")
    try:
        wait_for(lambda: warm_processes(state_dir), timeout=60, what="a warm sandbox before any job")
        sub = submit(r, "process")
        wait_for(lambda: scored(r, sub.id), timeout=240, what="the submission scored")
        logs = job_logs(r, sub.id)
        assert all("takes the warm process sandbox" in log for log in logs), logs  # the first job too
        # A new competition (other limits) while the worker idles: its horse is replaced by one for it.
        first = wait_for(lambda: warm_processes(state_dir), timeout=30, what="a warm sandbox while idle")
        warm_hint.record(r, "process", dataclasses.replace(limits, pids=limits.pids + 1))
        wait_for(
            lambda: (now := warm_processes(state_dir)) and not set(now) & set(first),
            timeout=30,
            what="the warm sandbox replaced for the new hint",
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        wait_for(lambda: not warm_processes(state_dir), timeout=15, what="the warm sandbox gone")
    finally:
        worker.kill()


def test_a_killed_worker_takes_its_waiting_horse_and_warm_sandbox_with_it(r, redis_server, state_dir):
    worker = start_worker("prefork-kill", redis_server, state_dir, state_dir / "worker.log")
    try:
        sub = submit(r, "process")
        wait_for(lambda: scored(r, sub.id), timeout=240, what="the submission scored")
        wait_for(lambda: warm_processes(state_dir), timeout=30, what="a warm sandbox while idle")
        worker.kill()
        worker.wait(10)
        wait_for(lambda: not warm_processes(state_dir), timeout=15, what="the warm sandbox gone")
    finally:
        worker.kill()


def _docker_reason() -> str | None:
    from workers.sandbox import docker as docker_backend

    return None if docker_backend.available() else "no Docker engine or sandbox image here"


@pytest.mark.skipif(_docker_reason() is not None, reason=_docker_reason() or "")
def test_a_warm_container_is_removed_with_its_worker_and_swept_after_a_kill(r, redis_server, state_dir):
    from sandbox_image.labels import ROLE_LABEL, WORKER_LABEL
    from workers.sandbox import docker as docker_backend

    client = docker_backend._engine()

    def warm_containers(running: bool | None = None) -> list:
        found = client.containers.list(all=True, filters={"label": f"{ROLE_LABEL}=warm"})
        mine = [c for c in found if c.labels.get(WORKER_LABEL, "").rpartition(":")[0] == os.uname().nodename]
        if running is not None:
            mine = [c for c in mine if (c.status == "running") == running]
        return mine

    before = {c.id for c in warm_containers()}

    def new_warm(running: bool | None = None) -> list:
        return [c for c in warm_containers(running) if c.id not in before]

    for ending in ("stop", "kill"):
        worker = start_worker(f"prefork-docker-{ending}", redis_server, state_dir, state_dir / "worker.log")
        try:
            sub = submit(r, "docker")
            wait_for(lambda sid=sub.id: scored(r, sid), timeout=300, what="the submission scored")
            assert any("takes the warm docker sandbox" in log for log in job_logs(r, sub.id))
            wait_for(lambda: new_warm(running=True), timeout=30, what="a running warm container while idle")
            if ending == "stop":
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(60) == 0
                wait_for(lambda: not new_warm(), timeout=15, what="the warm container removed")
            else:
                worker.kill()
                worker.wait(10)
                # Its attached client died with the horse: the warm host read end of file and exited.
                wait_for(lambda: not new_warm(running=True), timeout=30, what="the warm container ended")
                # Swept once the horse's pid is gone (a dead process not yet reaped still answers kill 0).
                wait_for(lambda: docker_backend.sweep() >= 0 and not new_warm(), timeout=30, what="swept")
        finally:
            worker.kill()
