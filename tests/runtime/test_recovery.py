"""Recovery: a worker killed mid-job, the reaper on real RQ state, and uploads that survive a store crash.

Real Redis (the session server, or a private one where the test kills it), real RQ registries, real
`bbo admin worker` processes for the kill; nothing of ours is mocked. RQ's `Worker` object is used
without running it to put a job into the started state exactly as a worker does before it forks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from artifacts import archive
from competition import scores, service
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import connect, reset_clients, rq_connection
from queue_schema.payloads import JobHeartbeat, ScoreJob
from queue_schema.records import load_submission, read_events, read_studies
from queue_schema.states import FailureCause, SubmissionState
from runtime import recovery
from runtime.recovery import reap
from runtime.redis_server import EmbeddedRedis
from runtime.spec import load
from tests.conftest import SUBMISSIONS
from tests.scoring_helpers import recompute
from tests.waiting import wait_for
from tests.worker_processes import gone, start_worker
from workers.heartbeat import JobBeat, WorkerHeartbeat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_leftover_reaper_lock(r):
    # Each test reaps on its own terms; a lock left by another test's worker would skip a turn.
    r.delete(keys.lock(recovery.REAPER_LOCK))


def submit(r, folder: str = "random_search", spec=None, team: str = "t"):
    spec = spec or load("demo")
    data = archive.pack(SUBMISSIONS / folder, spec.submission)
    return create_submission(r, team=team, data=data, spec=spec, phase="feedback", backend="process")


def start_job(conn) -> tuple[Job, Worker]:
    """Take the next queued job into the started state the way an RQ worker does before it forks."""
    queues = Queue.all(connection=conn)
    worker = Worker(queues, connection=conn, name=f"unit-{uuid.uuid4().hex[:8]}")
    worker.register_birth()
    job, _ = Queue.dequeue_any(queues, None, connection=conn)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    return job, worker


def started_ids(conn, job: Job) -> list[str]:
    return StartedJobRegistry(job.origin, connection=conn).get_job_ids(cleanup=False)


def events(r, sid: str, kind: str) -> list:
    return [e for e in read_events(r, sid, count=1000) if e.kind == kind]


def later(seconds: float) -> float:
    return time.time() + seconds


# -- reap() on real RQ state -----------------------------------------------------------------------


def test_a_started_job_nobody_runs_is_requeued_at_the_front_once(r):
    conn = rq_connection()
    sub = submit(r)
    job, _ = start_job(conn)
    # Just started: a horse needs a moment before its first beat.
    assert not reap(r)
    report = reap(r, now=later(recovery.START_GRACE_S + 1))
    assert report.requeued == [job.id] and not report.failed and not report.stuck
    assert started_ids(conn, job) == []
    fresh = Job.fetch(job.id, connection=conn)
    assert fresh.get_status() == JobStatus.QUEUED
    assert fresh.meta[recovery.REAPS_META] == 1
    queue = Queue(job.origin, connection=conn)
    assert queue.job_ids[0] == job.id and queue.job_ids.count(job.id) == 1
    (event,) = events(r, sub.id, "job_requeued")
    assert event.data["job"] == job.id and event.data["reason"] == "no heartbeat"
    assert event.data["problem"] == ScoreJob.model_validate(fresh.args[0]).problem
    # Idempotent: nothing left to do.
    assert not reap(r, now=later(recovery.START_GRACE_S + 1))
    assert len(events(r, sub.id, "job_requeued")) == 1


def test_a_job_taken_by_a_worker_that_died_before_starting_it_is_requeued(r):
    from runtime import dispatch

    conn = rq_connection()
    sub = submit(r)
    first, *_ = Queue(keys.team_queue("t"), connection=conn).job_ids
    # A worker pops the job (the fair pop records it in flight) and dies before RQ registers the run.
    popped = dispatch.fair_pop(conn, [], dispatch.team_queue_names(conn), [])
    assert popped == (keys.team_queue("t"), first)
    assert first not in Queue(keys.team_queue("t"), connection=conn).job_ids
    assert not reap(r).requeued  # within the grace: a live worker is about to start it
    report = reap(r, now=later(recovery.START_GRACE_S + 1))
    assert report.requeued == [first]
    assert Queue(keys.team_queue("t"), connection=conn).job_ids[0] == first
    assert [e.data["job"] for e in events(r, sub.id, "job_requeued")] == [first]
    assert not reap(r, now=later(recovery.START_GRACE_S + 1)).requeued


def test_a_started_job_leaves_the_in_flight_set(r):
    from workers.fair_worker import FairSimpleWorker

    conn = rq_connection()
    submit(r)
    worker = FairSimpleWorker(connection=conn, name=f"unit-{uuid.uuid4().hex[:8]}")
    worker.register_birth()
    job, _ = worker.dequeue_job_and_maintain_ttl(None)
    assert conn.zscore(keys.dispatch_inflight(), job.id) is not None
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    assert conn.zscore(keys.dispatch_inflight(), job.id) is None


def test_jobs_lost_before_they_were_enqueued_are_enqueued_by_the_reaper(r):
    from runtime.enqueue import expected_jobs

    conn = rq_connection()
    sub = submit(r)
    queue = Queue(keys.team_queue("t"), connection=conn)
    everything = expected_jobs(sub, load("demo"))
    assert sorted(queue.job_ids) == sorted(everything)
    # The accepting process died after enqueueing only some of them.
    lost = everything[:2]
    for jid in lost:
        Job.fetch(jid, connection=conn).delete()
        r.srem(keys.submission_jobs(sub.id, 1), jid)
    assert not reap(r).restored  # younger than the grace: maybe still enqueueing
    report = reap(r, now=later(recovery.ENQUEUE_GRACE_S + 1))
    assert report.restored == [sub.id]
    assert sorted(queue.job_ids) == sorted(everything)  # the lost ones back, nothing twice
    assert r.smembers(keys.submission_jobs(sub.id, 1)) == set(everything)
    assert Job.fetch(lost[0], connection=conn).args[0]["backend"] == "process"
    (event,) = events(r, sub.id, "jobs_restored")
    assert event.data["jobs"] == 2
    assert not reap(r, now=later(recovery.ENQUEUE_GRACE_S + 1)).restored


def test_a_job_whose_horse_or_worker_beats_is_left_alone(r):
    conn = rq_connection()
    submit(r)
    job, worker = start_job(conn)
    long_after = later(recovery.START_GRACE_S + 60)
    JobBeat(r, job.id, worker.name)()
    assert not reap(r, now=long_after)
    beat = JobHeartbeat.from_json(r.get(keys.job_heartbeat(job.id)))
    assert beat.worker == worker.name and beat.pid == os.getpid()
    # No job heartbeat, but the worker's own heartbeat says it runs this job.
    r.delete(keys.job_heartbeat(job.id))
    heartbeat = WorkerHeartbeat(worker)
    try:
        heartbeat.beat()
        (seen,) = recovery.workers(r)
        assert (seen.worker, seen.state, seen.current_job) == (worker.name, "busy", job.id)
        assert not reap(r, now=long_after)
        assert started_ids(conn, job) == [job.id]
        # Once neither speaks for it, it goes back to the queue.
        r.delete(keys.heartbeat(worker.name))
        report = reap(r, now=long_after)
        assert report.requeued == [job.id] and report.dead_workers == [worker.name]
    finally:
        heartbeat.stop()


def test_three_reaps_fail_the_version_as_infrastructure_not_charged(r):
    conn = rq_connection()
    sub = submit(r)
    first, _ = start_job(conn)
    for attempt in range(1, recovery.MAX_REAPS + 1):
        if attempt > 1:
            again, _ = start_job(conn)  # the requeued job is at the front of its queue
            assert again.id == first.id
        report = reap(r, now=later(recovery.START_GRACE_S + 1))
        if attempt < recovery.MAX_REAPS:
            assert report.requeued == [first.id]
    assert report.failed == [first.id] and not report.requeued
    failed = load_submission(r, sub.id)
    assert failed.state == SubmissionState.FAILED
    assert failed.failure.cause == FailureCause.INFRASTRUCTURE and not failed.charged
    assert Job.fetch(first.id, connection=conn).get_status() == JobStatus.FAILED
    assert first.id not in Queue(first.origin, connection=conn).job_ids
    # The version's other jobs were cancelled, not left to run.
    others = r.smembers(keys.submission_jobs(sub.id, 1)) - {first.id}
    assert {Job.fetch(j, connection=conn).get_status() for j in others} == {JobStatus.CANCELED}
    assert len(events(r, sub.id, "job_requeued")) == recovery.MAX_REAPS - 1
    assert len(events(r, sub.id, "job_abandoned")) == 1


def test_a_stuck_job_is_requeued_and_its_worker_told_to_stop_it(r):
    conn = rq_connection()
    submit(r)
    job, worker = start_job(conn)
    execution_id = worker.execution.id
    JobBeat(r, job.id, worker.name)()  # still beating: a hung job, not a dead one
    channel = conn.pubsub(ignore_subscribe_messages=True)
    channel.subscribe(worker.pubsub_channel_name)
    try:
        past_budget = later(job.timeout + recovery.STUCK_SLACK_S + 5)
        assert not reap(r, now=later(job.timeout))  # over its timeout, but RQ's own monitor comes first
        report = reap(r, now=past_budget)
        assert report.stuck == [job.id] and report.requeued == [job.id]
        assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.QUEUED
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = channel.get_message(timeout=1)
        assert message is not None, "no stop command reached the worker's channel"
        command = json.loads(message["data"])
        assert command == {"command": "stop-execution", "job_id": job.id, "execution_id": execution_id}
    finally:
        channel.close()


def test_racing_reapers_requeue_a_job_once(r, redis_server):
    conn = rq_connection()
    sub = submit(r)
    job, _ = start_job(conn)
    now = later(recovery.START_GRACE_S + 1)
    reports = []
    gate = threading.Barrier(4)

    def one() -> None:
        own = redis.Redis.from_url(redis_server, decode_responses=True)
        own_rq = redis.Redis.from_url(redis_server)
        gate.wait()
        reports.append(reap(own, now=now, rq_conn=own_rq))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(job_id for report in reports for job_id in report.requeued) == [job.id]
    assert Queue(job.origin, connection=conn).job_ids.count(job.id) == 1
    assert len(events(r, sub.id, "job_requeued")) == 1
    assert Job.fetch(job.id, connection=conn).meta[recovery.REAPS_META] == 1


def test_dead_workers_leave_the_fleet_and_rq_forgets_them(r):
    conn = rq_connection()
    submit(r)
    queues = Queue.all(connection=conn)
    alive, dead = (Worker(queues, connection=conn, name=f"fleet-{n}") for n in ("alive", "dead"))
    beats = [WorkerHeartbeat(w) for w in (alive, dead)]
    try:
        for w, beat in zip((alive, dead), beats, strict=True):
            w.register_birth()
            beat.beat()
        assert [hb.worker for hb in recovery.workers(r)] == ["fleet-alive", "fleet-dead"]
        assert r.ttl(keys.heartbeat("fleet-dead")) <= recovery.WORKER_HEARTBEAT_TTL_S
        r.delete(keys.heartbeat("fleet-dead"))  # what its TTL does when the process is gone
        assert reap(r).dead_workers == ["fleet-dead"]
        assert [hb.worker for hb in recovery.workers(r)] == ["fleet-alive"]
        assert {w.name for w in Worker.all(connection=conn)} == {"fleet-alive"}
        assert reap(r).dead_workers == []
    finally:
        for beat in beats:
            beat.stop()


def test_reap_if_due_takes_turns_across_the_fleet(r):
    assert recovery.reap_if_due(r, "one") is not None
    assert recovery.reap_if_due(r, "two") is None  # within the interval: someone else just did


# -- a worker killed mid-job -----------------------------------------------------------------------


def crash_spec():
    """Two fast problems, three studies in one job each: a kill after the first study leaves two to resume."""
    spec = load("demo")
    feedback = dataclasses.replace(
        spec.phases["feedback"], problems=("DT-iris-acc", "lasso-diabetes-mae"), studies=3, studies_per_job=3
    )
    return dataclasses.replace(spec, phases={**spec.phases, "feedback": feedback})


def half_done_job(r, sid: str, studies: int) -> tuple[str, ScoreJob] | None:
    """A started job of the submission with some of its studies written, but not all."""
    conn = rq_connection()
    for job_id in r.smembers(keys.submission_jobs(sid, 1)):
        job = Job.fetch(job_id, connection=conn)
        if job.get_status() != JobStatus.STARTED:
            continue
        payload = ScoreJob.model_validate(job.args[0])
        if 0 < r.hlen(keys.study_results(sid, 1, payload.problem)) < studies:
            return job_id, payload
    return None


@pytest.mark.system
def test_a_worker_killed_mid_job_is_noticed_and_its_job_resumes(r, redis_server, state_dir, tmp_path):
    spec = crash_spec()
    studies = spec.phases["feedback"].studies
    sub = submit(r, "ponderer", spec=spec, team="crash")
    log = tmp_path / "workers.log"
    first = start_worker("crash-first", redis_server, state_dir, log)
    second = None
    try:
        victim, payload = wait_for(lambda: half_done_job(r, sub.id, studies), 120, "a job half done", log)
        beat = JobHeartbeat.from_json(r.get(keys.job_heartbeat(victim)))
        assert beat.worker == "crash-first" and beat.study is not None
        tree = psutil.Process(first.pid).children(recursive=True)
        assert any(p.pid == beat.pid for p in tree), "the job heartbeat names the work horse"
        assert len(tree) >= 2, "a work horse and its optimizer process"
        before = read_studies(r, sub.id, 1, payload.problem)

        first.send_signal(signal.SIGKILL)  # the main worker process only, as a crash would
        killed_at = time.monotonic()
        first.wait(10)
        wait_for(lambda: all(gone(p) for p in tree), 20, "the horse and its optimizer to die with the worker")

        second = start_worker("crash-second", redis_server, state_dir, log)

        def requeued():
            return [e for e in events(r, sub.id, "job_requeued") if e.data["job"] == victim]

        (event,) = wait_for(
            requeued, 60 - (time.monotonic() - killed_at), "the reaper to requeue the job", log
        )
        noticed_after = time.monotonic() - killed_at
        print(f"kill -> job_requeued: {noticed_after:.1f} s (reason {event.data['reason']!r})")
        assert event.data["worker"] == "crash-first"
        wait_for(lambda: "crash-first" not in {hb.worker for hb in recovery.workers(r)}, 30, "a dead worker")

        def finished():
            current = load_submission(r, sub.id)
            return current if current.state in (SubmissionState.SCORED, SubmissionState.FAILED) else None

        done = wait_for(finished, 240, "the submission to finish", log)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # warm shutdown
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    assert done.state == SubmissionState.SCORED, done.failure
    assert (
        done.progress.studies_done
        == done.progress.studies_total
        == len(spec.phases["feedback"].problems) * studies
    )
    counters = r.hmget(keys.submission(sub.id), "evals_done", "norm_count")
    assert [int(c) for c in counters] == [
        done.progress.studies_total * spec.evals_per_study,
        done.progress.studies_total,
    ]
    written = [(e.data["problem"], e.data["study"]) for e in events(r, sub.id, "study")]
    assert sorted(written) == sorted(set(written)) and len(written) == done.progress.studies_total
    # Resumed, not rerun: the studies finished before the kill are the first horse's, the rest another's.
    after = read_studies(r, sub.id, 1, payload.problem)
    assert sorted(after) == list(range(studies))
    for index, result in before.items():
        assert after[index].worker == result.worker
    assert {after[i].worker for i in after if i not in before}.isdisjoint({b.worker for b in before.values()})
    report = scores.report(r, sub.id)
    assert abs(recompute(report) - done.score) < 1e-9 and report["score"] == done.score


# -- durable acknowledgement -----------------------------------------------------------------------


def test_an_accepted_submission_survives_a_crash_of_the_store(redis_server):
    directory = Path(tempfile.mkdtemp(prefix="bbo-durable-"))
    store = EmbeddedRedis(directory, directory / "redis.sock")
    store.start()
    session_url = os.environ["BBO_REDIS_URL"]
    os.environ["BBO_REDIS_URL"] = store.url
    reset_clients()
    try:
        r = connect(store.url)
        assert r.config_get("appendfsync") == {"appendfsync": "always"}
        spec = load("demo")
        data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
        accepted = service.submit(r, "durable", data, "rs.zip", spec, backend="process")
        store.process.send_signal(signal.SIGKILL)  # no shutdown, no final flush
        store.process.wait(10)
        reset_clients()
        store.start()  # replays the AOF
        r = connect(store.url)
        again = load_submission(r, accepted.id)
        assert again is not None and again.state == SubmissionState.QUEUED
        assert again.model_dump(exclude={"updated_at"}) == accepted.model_dump(exclude={"updated_at"})
        assert archive.fetch(rq_connection(store.url), accepted.artifact_sha256) == data
        jobs = r.smembers(keys.submission_jobs(accepted.id, 1))
        assert len(jobs) == len(spec.phases["feedback"].problems)
        conn = rq_connection(store.url)
        queued = {job_id for queue in Queue.all(connection=conn) for job_id in queue.job_ids}
        assert jobs <= queued
    finally:
        store.stop()
        os.environ["BBO_REDIS_URL"] = session_url
        reset_clients()
        shutil.rmtree(directory, ignore_errors=True)
