"""The RQ job against a real Redis: exactly-once study results, retries, fatal errors failing the batch."""

from __future__ import annotations

import pytest
from rq import Queue

from artifacts import archive
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.payloads import ScoreJob
from queue_schema.records import load_submission, read_events, read_job_log
from runtime.spec import SPECS_DIR, load
from tests.conftest import SUBMISSIONS
from workers.fair_worker import FairSimpleWorker
from workers.job import score_problem

pytestmark = pytest.mark.usefixtures("unsafe_ok")


def submit(r, folder: str):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / folder, spec.submission)
    return create_submission(r, team="t", data=data, spec=spec, phase="feedback", backend="process"), spec


def work(burst_jobs: int | None = None) -> None:
    conn = rq_connection()
    FairSimpleWorker(connection=conn).work(burst=True, max_jobs=burst_jobs, logging_level="WARNING")


def test_a_rerun_job_skips_finished_studies_and_counts_nothing_twice(r):
    sub, spec = submit(r, "random_search")
    first_job_id = sorted(r.smembers(keys.submission_jobs(sub.id, 1)))[0]
    payload = Queue(keys.team_queue("t"), connection=rq_connection()).fetch_job(first_job_id).args[0]
    assert score_problem(payload)["status"] == "done"
    after_first = load_submission(r, sub.id).progress
    again = score_problem(payload)  # a retried or duplicated job
    assert again["status"] == "done"
    assert load_submission(r, sub.id).progress == after_first
    assert after_first.studies_done == 2
    assert after_first.evals_done == 2 * spec.evals_per_study


def test_the_whole_submission_scores_through_the_queue(r):
    sub, _ = submit(r, "random_search")
    work()
    done = load_submission(r, sub.id)
    assert done.state.value == "scored" and done.score is not None
    assert done.progress.studies_done == done.progress.studies_total == 8
    kinds = [(e.kind, e.data.get("to")) for e in read_events(r, sub.id)]
    assert ("submitted", None) in kinds and ("state", "running") in kinds and ("state", "scored") in kinds
    assert sum(1 for kind, _ in kinds if kind == "study") == 8


def test_a_fatal_error_fails_the_batch_and_cancels_queued_jobs(r):
    sub, _ = submit(r, "wrong_batch")
    work(burst_jobs=1)
    failed = load_submission(r, sub.id)
    assert failed.state.value == "failed"
    assert failed.failure.cause.value == "optimizer_crashed"
    assert "wrong number of points" in failed.failure.message
    queue = Queue(keys.team_queue("t"), connection=rq_connection())
    assert queue.count == 0  # the other three problems' jobs were cancelled, never run
    job_ids = r.smembers(keys.submission_jobs(sub.id, 1))
    assert any(read_job_log(r, j) for j in job_ids)  # the organizer log kept the story


def test_a_stale_job_of_an_old_score_version_does_nothing(r):
    sub, _ = submit(r, "random_search")
    r.hset(keys.submission(sub.id), "score_version", "2")
    job = ScoreJob(
        submission_id=sub.id,
        score_version=1,
        problem="DT-iris-acc",
        studies=[0, 1],
        phase="feedback",
        spec_hash=sub.spec_hash,
        artifact_sha256=sub.artifact_sha256,
        backend="process",
    )
    assert score_problem(job.model_dump(mode="json")) == {"status": "skipped"}


def test_final_phase_runs_in_chunks_and_scores_once(r):
    spec = load("demo")
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    sub = create_submission(r, team="t", data=data, spec=spec, phase="final", backend="process")
    assert len(r.smembers(keys.submission_jobs(sub.id, 1))) == 4 * 2  # 4 problems x 2 chunks of 2 studies
    work()
    done = load_submission(r, sub.id)
    assert done.state.value == "scored"
    assert done.progress.studies_done == 16
    assert sum(1 for e in read_events(r, sub.id) if e.data.get("to") == "scored") == 1


def test_missing_baseline_is_a_clear_error_before_anything_is_stored(r, tmp_path):
    from runtime.versions import BaselineError

    text = (SPECS_DIR / "demo.toml").read_text()
    custom = tmp_path / "mine.toml"
    custom.write_text(text.replace('name = "demo"', 'name = "mine"'))
    spec = load(custom)
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    with pytest.raises(BaselineError, match="bbo admin baselines build --spec mine"):
        create_submission(r, team="t", data=data, spec=spec, phase="feedback", backend="process")
    assert r.dbsize() == 0


def _sandboxes(marker: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "sandbox_image.host" in cmdline and marker in cmdline:
            found.append(proc.pid)
    return found


def test_stop_kills_the_running_sandbox_within_seconds_and_keeps_finished_studies(r, redis_server, state_dir):
    import os
    import subprocess
    import sys
    import time

    from queue_schema.records import transition
    from queue_schema.states import SubmissionState

    sub, _ = submit(r, "sleepy")
    env = {**os.environ, "BBO_REDIS_URL": redis_server, "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "cli", "admin", "worker", "--burst"], env=env)
    try:
        deadline = time.monotonic() + 120
        while load_submission(r, sub.id).progress.studies_done < 1:
            assert time.monotonic() < deadline, "no study finished"
            time.sleep(0.1)
        assert _sandboxes(str(state_dir)), "a sandbox should be running the next study"
        stopped_at = time.monotonic()
        assert transition(r, sub.id, SubmissionState.STOPPED, only_from=[SubmissionState.RUNNING]) is not None
        while _sandboxes(str(state_dir)):
            assert time.monotonic() - stopped_at < 3, "the sandbox outlived the stop"
            time.sleep(0.05)
        worker.wait(30)  # queued jobs are still there: the stopped submission's jobs skip themselves
    finally:
        worker.kill()
    done = load_submission(r, sub.id)
    assert done.state.value == "stopped"
    assert done.progress.studies_done >= 1  # finished studies are kept
    time.sleep(1)
    assert load_submission(r, sub.id).progress.studies_done == done.progress.studies_done


def test_a_sandbox_that_is_not_there_is_waited_for_then_infrastructure(r, monkeypatch):
    """The container engine restarting: the job waits (beating) for the backend instead of failing at
    once, and gives up as an infrastructure error (retried by RQ, never charged) only after the wait."""
    import time

    import workers.job
    from workers.sandbox.base import SandboxUnavailable

    sub, _ = submit(r, "random_search")
    job_id = sorted(r.smembers(keys.submission_jobs(sub.id, 1)))[0]
    payload = Queue(keys.team_queue("t"), connection=rq_connection()).fetch_job(job_id).args[0]
    payload = {**payload, "backend": "docker"}
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # no engine answers
    monkeypatch.setattr(workers.job, "SANDBOX_WAIT_S", 1.0)
    monkeypatch.setattr(workers.job, "SANDBOX_POLL_S", 0.2)
    started = time.monotonic()
    with pytest.raises(SandboxUnavailable):
        score_problem(payload)
    assert time.monotonic() - started >= 1.0
    assert "sandbox unavailable, waiting" in "\n".join(read_job_log(r, f"{sub.id}-local"))  # not run by RQ
    assert load_submission(r, sub.id).progress.studies_done == 0
