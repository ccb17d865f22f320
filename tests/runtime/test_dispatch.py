"""Fair share: one queue per team served round-robin across the fleet, organizer work first, new teams
picked up by running workers, and a submission's jobs enqueued longest problem first by the cost table."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rq import Queue, Worker

from artifacts import archive
from competition import service
from competition.submit import create_submission
from gateway import metrics
from queue_schema import keys
from queue_schema.connection import connect, rq_connection
from runtime import dispatch
from runtime import enqueue as enqueue_module
from runtime.spec import load
from suites.bayesmark_catalogue import all_problems
from tests.conftest import SUBMISSIONS
from tests.dispatch_helpers import RAN
from tests.waiting import wait_for
from workers.fair_worker import FairSimpleWorker

ROOT = Path(__file__).resolve().parents[2]
RECORD = "tests.dispatch_helpers.record"


def enqueue(queue_name: str, tag: str) -> None:
    Queue(queue_name, connection=rq_connection()).enqueue_call(RECORD, args=(tag,), result_ttl=60)


def ran(r) -> list[str]:
    return r.lrange(RAN, 0, -1)


def test_teams_take_turns_organizer_work_goes_first_and_the_legacy_queue_last(r):
    alpha, beta = dispatch.team_queue(r, "alpha"), dispatch.team_queue(r, "beta")
    for i in range(6):
        enqueue(alpha, f"a{i}")  # alpha's big backlog first ...
    for i in range(2):
        enqueue(beta, f"b{i}")  # ... then beta's two jobs
    enqueue(keys.SCORE_QUEUE, "legacy")
    enqueue(keys.PRIORITY_QUEUE, "final")
    FairSimpleWorker(connection=rq_connection()).work(burst=True, logging_level="WARNING")
    assert ran(r) == ["final", "a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5", "legacy"]


def test_the_turn_passes_across_workers(r):
    names = [dispatch.team_queue(r, team) for team in ("aa", "bb", "cc")]
    for name in names:
        for i in range(2):
            enqueue(name, f"{name[-2:]}{i}")
    # Six workers, one job each: each starts just after the team the previous one served.
    for i in range(6):
        FairSimpleWorker(connection=rq_connection(), name=f"w{i}").work(
            burst=True, max_jobs=1, logging_level="WARNING"
        )
    assert ran(r) == ["aa0", "bb0", "cc0", "aa1", "bb1", "cc1"]
    assert r.get(keys.dispatch_cursor()) == names[-1]


def test_a_worker_that_does_not_know_the_newest_team_yet_starts_the_turn_from_the_top(r):
    known = [dispatch.team_queue(r, "aa"), dispatch.team_queue(r, "bb")]
    for name in known:
        enqueue(name, name)
    r.set(keys.dispatch_cursor(), keys.team_queue("zz"))  # served by a worker with a fresher list
    assert dispatch.fair_pop(rq_connection(), [], known, [])[0] == known[0]
    assert dispatch.fair_pop(rq_connection(), [], known, [])[0] == known[1]
    assert dispatch.fair_pop(rq_connection(), [], known, []) is None


def test_a_team_queue_created_after_the_worker_started_is_served(r):
    worker = FairSimpleWorker(connection=rq_connection())

    def newcomer_submits() -> None:
        time.sleep(1)  # the worker is blocked on the queues it knew at start
        enqueue(dispatch.team_queue(connect(), "newcomer"), "new")

    thread = threading.Thread(target=newcomer_submits)
    thread.start()
    # max_idle_time bounds the test if the new queue were never seen.
    worker.work(max_jobs=1, max_idle_time=60, logging_level="WARNING")
    thread.join()
    assert ran(r) == ["new"]
    assert keys.team_queue("newcomer") in worker.queue_names()


def test_a_new_team_s_first_job_does_not_wait_for_the_worker_s_next_refresh(r):
    worker = FairSimpleWorker(connection=rq_connection())
    worker.refresh_seconds = 30  # the periodic look at the team queues cannot be what finds it
    took: list[float] = []

    def newcomer_submits() -> None:
        time.sleep(1)  # the worker is blocked on the queues it knew at start
        took.append(time.monotonic())
        enqueue(dispatch.team_queue(connect(), "newcomer"), "new")

    thread = threading.Thread(target=newcomer_submits)
    thread.start()
    worker.work(max_jobs=1, max_idle_time=60, logging_level="WARNING")
    thread.join()
    assert ran(r) == ["new"]
    assert time.monotonic() - took[0] < 5  # woken by the new queue's token, not after 30 s
    assert r.llen(keys.team_queues_changed()) == 0  # the token was taken
    dispatch.team_queue(r, "newcomer")  # a known queue: no new token
    assert r.llen(keys.team_queues_changed()) == 0


@pytest.mark.system
def test_the_worker_command_serves_new_team_queues_and_stops_warmly(r, redis_server):
    env = {**os.environ, "BBO_REDIS_URL": redis_server}
    cmd = [sys.executable, "-m", "cli", "admin", "worker", "--name", "fair-test"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        conn = rq_connection()
        wait_for(lambda: any(w.name == "fair-test" for w in Worker.all(connection=conn)), 120, "the worker")
        late = dispatch.team_queue(r, "late")
        enqueue(late, "x")
        enqueue(late, "y")
        wait_for(lambda: len(ran(r)) == 2, 120, "the late team's jobs")
        assert ran(r) == ["x", "y"]
        (worker,) = [w for w in Worker.all(connection=conn) if w.name == "fair-test"]
        assert late in worker.queue_names()  # RQ's own view of the worker follows its queue list
        proc.send_signal(signal.SIGTERM)  # warm shutdown while idle
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_submission_is_enqueued_longest_problem_first_by_the_cost_table(r, monkeypatch, tmp_path):
    monkeypatch.setenv("BBO_STATE_DIR", str(tmp_path))
    spec = load("demo")
    problems = spec.phase("feedback").problems
    # This machine's table says: alphabetical order is cheapest first.
    costs = {p: float(i + 1) for i, p in enumerate(sorted(problems))}
    dispatch.save_table({"spec": "demo", "seconds_per_eval": costs}, dispatch.measured_path("demo"))
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    create_submission(r, team="gamma", data=data, spec=spec, phase="feedback", backend="process")
    queue = Queue(keys.team_queue("gamma"), connection=rq_connection())
    order = [queue.fetch_job(j).args[0]["problem"] for j in queue.job_ids]
    assert order == sorted(problems, reverse=True)
    assert dispatch.team_queue_names(r) == [keys.team_queue("gamma")]
    # Organizer work (final phase, rescore) goes to the priority queue instead.
    create_submission(r, team="gamma", data=data, spec=spec, phase="final", backend="process", priority=True)
    final = spec.phase("final")
    assert Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).count == len(final.problems) * len(
        final.chunks()
    )
    assert queue.count == len(problems)


def test_costs_prefer_this_machine_then_the_shipped_table_then_a_coarse_guess(monkeypatch, tmp_path):
    monkeypatch.setenv("BBO_STATE_DIR", str(tmp_path))
    demo = load("demo").all_problems()
    shipped = dispatch.load_table(dispatch.shipped_path("demo"))
    assert set(shipped) == set(demo)  # the shipped table covers its spec
    covered = set(demo) | set(load("neurips2020").all_problems())
    uncovered = next(p.name for p in all_problems() if p.name not in covered)
    costs = dispatch.costs_for("demo", [demo[0], demo[1], uncovered])
    assert costs.sources == {
        demo[0]: str(dispatch.shipped_path("demo")),
        demo[1]: str(dispatch.shipped_path("demo")),
        uncovered: "coarse",
    }
    measured = dispatch.measured_path("demo")
    dispatch.save_table({"seconds_per_eval": {demo[0]: 9.0}}, measured)
    costs = dispatch.costs_for("demo", [demo[0], demo[1]])
    assert costs.seconds_per_eval[demo[0]] == 9.0 and costs.sources[demo[0]] == str(measured)
    assert costs.sources[demo[1]] == str(dispatch.shipped_path("demo"))
    measured.write_text("{not json")  # a broken table orders nothing wrongly; it is skipped
    assert dispatch.costs_for("demo", [demo[0]]).seconds_per_eval[demo[0]] == shipped[demo[0]]


def test_queue_depths_and_metrics_cover_every_team_queue(r):
    for i in range(3):
        enqueue(dispatch.team_queue(r, "alpha"), f"a{i}")
    enqueue(dispatch.team_queue(r, "beta"), "b")
    enqueue(keys.PRIORITY_QUEUE, "p")
    depths = dispatch.queue_depths(r)
    assert list(depths["per_queue"]) == ["bbo-priority", "bbo-team-alpha", "bbo-team-beta", "bbo-score"]
    assert depths["per_queue"]["bbo-team-alpha"] == {"depth": 3, "running": 0}
    assert (depths["queued"], depths["running"]) == (5, 0)
    text = metrics.render(service.metrics_snapshot(r))
    assert 'bbo_queue_depth{queue="bbo-team-alpha"} 3' in text
    assert 'bbo_jobs{state="queued"} 5' in text and 'bbo_jobs{state="running"} 0' in text
    json.dumps(depths)  # plain data, for the autoscaler and the console


def test_a_job_s_time_limit_comes_from_the_cost_table_that_orders_it(r, monkeypatch, tmp_path):
    monkeypatch.setenv("BBO_STATE_DIR", str(tmp_path))
    spec = load("demo")
    phase = spec.phase("feedback")
    costs = {p: float(i + 1) for i, p in enumerate(sorted(phase.problems))}
    dispatch.save_table({"spec": "demo", "seconds_per_eval": costs}, dispatch.measured_path("demo"))
    data = archive.pack(SUBMISSIONS / "random_search", spec.submission)
    sub = create_submission(r, team="delta", data=data, spec=spec, phase="feedback", backend="process")
    queue = Queue(keys.team_queue("delta"), connection=rq_connection())
    jobs = [queue.fetch_job(j) for j in queue.job_ids]
    assert jobs
    for job in jobs:
        problem, studies = job.args[0]["problem"], len(job.args[0]["studies"])
        # Each evaluation three times the table's figure, the optimizer's whole budget, and fixed room.
        per_study = spec.limits.suggest_budget_s + 3.0 * costs[problem] * spec.evals_per_study + 60
        assert job.timeout == math.ceil(studies * per_study + 300)
        assert job.timeout == dispatch.job_timeout(spec, costs[problem], studies)
        # The same rule whoever asks: job_options without the figure reads the same table.
        options = enqueue_module.job_options(
            sub, spec, problem, job.args[0]["chunk"], job.args[0]["studies"], "process"
        )
        assert options["timeout"] == job.timeout
        # Generous: at least the expected length (what orders the jobs) times the margin's worth of room.
        assert job.timeout > studies * dispatch.study_seconds(spec, costs[problem]) + 300
    cheap, dear = sorted(phase.problems)[0], sorted(phase.problems)[-1]
    assert dispatch.job_timeout(spec, costs[dear], 1) > dispatch.job_timeout(spec, costs[cheap], 1)


def test_a_problem_no_table_covers_gets_the_coarse_guess_s_time_limit(monkeypatch, tmp_path):
    monkeypatch.setenv("BBO_STATE_DIR", str(tmp_path))
    spec = load("demo")
    covered = set(spec.all_problems()) | set(load("neurips2020").all_problems())
    uncovered = next(p.name for p in all_problems() if p.name not in covered)
    seconds = dispatch.costs_for(spec.name, [uncovered]).seconds_per_eval[uncovered]
    assert seconds == dispatch.coarse_seconds(uncovered)
    assert dispatch.job_timeout(spec, seconds, 2) == math.ceil(
        2 * (spec.limits.suggest_budget_s + 3.0 * seconds * spec.evals_per_study + 60) + 300
    )
