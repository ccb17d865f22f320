"""bench/seed_data.py: a small seeded store reads back through the service like a real one."""

from __future__ import annotations

import json

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from artifacts import archive
from autoscaler.daemon import read_status
from bench.seed_data import FAILURE_MESSAGES, seed, seed_spec
from competition import scores, service, teams
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.records import load_submission, read_events, transition
from queue_schema.states import SubmissionState
from runtime import dispatch
from tests.conftest import SUBMISSIONS

NOW = 1_700_000_000.0


@pytest.fixture()
def seeded(r):
    return seed(r, submissions=40, teams=5, seed=3, detailed=4, now=NOW)


def _all(r) -> list:
    return [service.status(r, None, sid) for sid in r.zrevrange(keys.submissions_index(), 0, -1)]


def test_every_state_and_cause_loads_through_the_service(r, seeded) -> None:
    subs = _all(r)
    assert len(subs) == seeded["submissions"] == 40
    states = {state.value: sum(s.state == state for s in subs) for state in SubmissionState}
    assert states == seeded["states"] and all(states.values())
    assert {s.failure.cause for s in subs if s.failure} == set(FAILURE_MESSAGES)
    for sub in subs:
        total = sub.progress.studies_total
        assert total == 60 and 0 <= sub.progress.studies_done <= total
        # A study cut off early counts only the evaluations it ran.
        assert sub.progress.studies_done * 4 <= sub.progress.evals_done <= sub.progress.studies_done * 32
        if sub.state == SubmissionState.SCORED:
            assert sub.progress.studies_done == total and sub.score is not None
            assert r.hget(keys.score_version(sub.id, 1), "score") == repr(sub.score)
        assert r.scard(keys.submission_jobs(sub.id, 1)) == 30
    # Each team's list, newest first, and its token.
    listed = 0
    for name, token in seeded["tokens"].items():
        mine = service.list_submissions(r, name, limit=1000)
        assert [s.created_at for s in mine] == sorted((s.created_at for s in mine), reverse=True)
        listed += len(mine)
        assert teams.authenticate(r, token) == name
    assert listed == 40


def test_leaderboard_metrics_and_queues(r, seeded) -> None:
    rows = service.leaderboard(r, "feedback", "demo")
    assert rows and [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    metrics = service.metrics_snapshot(r)
    assert metrics["submissions"] == seeded["states"]
    assert metrics["failures"] == seeded["failures"]
    assert metrics["jobs"] == {"queued": seeded["jobs_queued"], "running": seeded["jobs_started"]}
    assert metrics["workers"] == seeded["workers"] >= 1
    assert metrics["teams"] == 5
    # The autoscaler's last step and its decisions, as the Fleet view reads them.
    status = read_status(r, "local")
    assert status["held"] is True and status["workers"]["busy"] == seeded["workers"]
    decisions = [e for e in read_events(r, count=10_000) if e.kind == "autoscaler"]
    assert decisions and sum(e.data["add"] for e in decisions) == seeded["workers"]
    assert seeded["jobs"] == 40 * 30
    # A running submission's next job was started in RQ by a worker whose heartbeat names it.
    running = next(s for s in _all(r) if s.state == SubmissionState.RUNNING)
    queue = keys.team_queue(running.team)
    started = StartedJobRegistry(queue, connection=rq_connection()).get_job_ids(cleanup=False)
    job = r.hget(keys.heartbeat("worker-00"), "job")
    assert job in started and job.startswith(running.id)
    assert Job.fetch(job, connection=rq_connection()).get_status() == "started"
    assert dispatch.queue_depths(r)["per_queue"][queue]["running"] >= 1


def test_detail_of_a_scored_submission_is_real(r, seeded) -> None:
    scored = [s for s in _all(r) if s.state == SubmissionState.SCORED]
    detailed = [
        s for s in scored if r.exists(keys.study_results(s.id, 1, seed_spec().phase("feedback").problems[0]))
    ]
    assert detailed, "the newest scored submissions carry their studies"
    report = scores.report(r, detailed[0].id)
    assert len(report["problems"]) == 6
    assert sum(len(p["studies"]) for p in report["problems"]) == 60
    assert report["provenance"]["studies"] == 60
    # The record's score is what the studies give (the mean of the problems' scores).
    mean = sum(p["score"] for p in report["problems"]) / 6
    assert detailed[0].score == pytest.approx(mean, abs=1e-6)
    kinds = {e.kind for e in read_events(r, detailed[0].id, count=1000)}
    assert {"submitted", "state", "study"} <= kinds


def test_seeded_shapes_match_the_real_writers(r, seeded) -> None:
    spec = seed_spec()
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    teams.add_team(r, "real-one")
    real = create_submission(r, team="real-one", data=data, spec=spec, phase="feedback", backend="docker")
    queued = next(s for s in _all(r) if s.state == SubmissionState.QUEUED and s.id != real.id)
    # The submission hash and record.
    real_hash, seeded_hash = r.hgetall(keys.submission(real.id)), r.hgetall(keys.submission(queued.id))
    assert set(real_hash) == set(seeded_hash)
    assert json.loads(real_hash["record"]).keys() == json.loads(seeded_hash["record"]).keys()
    # The RQ jobs: same function, payload fields, timeouts, TTLs, retries, callback, queue.
    conn = rq_connection()
    real_job = Job.fetch(sorted(r.smembers(keys.submission_jobs(real.id, 1)))[0], connection=conn)
    seeded_job = Job.fetch(sorted(r.smembers(keys.submission_jobs(queued.id, 1)))[0], connection=conn)
    for attribute in ("func_name", "timeout", "result_ttl", "failure_ttl", "retries_left", "retry_intervals"):
        assert getattr(real_job, attribute) == getattr(seeded_job, attribute), attribute
    assert real_job.args[0].keys() == seeded_job.args[0].keys()
    same = ("failure_callback_name", "result_ttl", "failure_ttl", "timeout", "status")
    assert conn.hmget(real_job.key, same) == conn.hmget(seeded_job.key, same)
    assert seeded_job.origin == keys.team_queue(queued.team)
    assert seeded_job.id in Queue(seeded_job.origin, connection=conn).get_job_ids()
    assert set(conn.hkeys(real_job.key)) == set(conn.hkeys(seeded_job.key))
    # The events a transition writes.
    transition(r, real.id, SubmissionState.RUNNING, only_from=[SubmissionState.QUEUED])
    real_events = {e.kind: e for e in read_events(r, real.id)}
    running = next(s for s in _all(r) if s.state == SubmissionState.RUNNING)
    seeded_events = {e.kind: e for e in read_events(r, running.id, count=1000)}
    for kind in ("submitted", "state"):
        assert real_events[kind].data.keys() == seeded_events[kind].data.keys(), kind
    assert load_submission(r, running.id).partial_score is not None or running.progress.studies_done == 0


def test_same_seed_same_data(r) -> None:
    def snapshot() -> list:
        return [(s.id, s.team, s.state, s.score, s.created_at) for s in _all(r)]

    seed(r, submissions=25, teams=3, seed=11, detailed=1, now=NOW)
    first = snapshot()
    r.flushall()
    seed(r, submissions=25, teams=3, seed=11, detailed=1, now=NOW)
    assert snapshot() == first


def test_console_bench_traffic_applies_through_the_real_writers(r, redis_server) -> None:
    from bench.console import Traffic

    seed(r, submissions=40, teams=5, seed=5, detailed=2, now=NOW)
    events_before = r.xlen(keys.events())
    traffic = Traffic(redis_server, seed=1)
    done = [traffic.step() for _ in range(80)]
    assert "study" in done and traffic.submit() == "submit" and traffic.start() == "start"
    assert r.xlen(keys.events()) > events_before + 60
    subs = _all(r)
    assert len(subs) > 40
    assert all(s.progress.studies_done <= s.progress.studies_total for s in subs)
    assert service.metrics_snapshot(r)["workers"] == 1  # the seeded worker, still beating
