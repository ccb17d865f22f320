"""Rescore: a new score version of the same artifact, scored by a real worker; old versions stay."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Queue

from artifacts import archive
from competition import audit, quotas, rescore, scores, service, teams
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.payloads import StudyResult
from queue_schema.records import load_submission, start_score_version, write_study
from queue_schema.states import StudyState, SubmissionState
from runtime.spec import Spec, load
from tests.conftest import SUBMISSIONS

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def quick_spec() -> Spec:
    """The demo rules (and baselines) on two fast feedback problems of one study each, and a final phase
    of two fast held-out problems x 4 studies, 2 per job."""
    spec = load("demo")
    feedback = dataclasses.replace(
        spec.phases["feedback"], problems=("DT-iris-acc", "lasso-diabetes-mae"), studies=1, studies_per_job=1
    )
    final = dataclasses.replace(
        spec.phases["final"], problems=("DT-breast-acc", "linear-wine-acc"), studies=4, studies_per_job=2
    )
    return dataclasses.replace(spec, phases={"feedback": feedback, "final": final})


def burst_worker(redis_url: str, timeout: float = 600) -> None:
    """One real `bbo admin worker --burst`: it scores everything queued, then exits."""
    env = {**os.environ, "BBO_REDIS_URL": redis_url, "BBO_ALLOW_UNSAFE_SANDBOX": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "admin", "worker", "--burst"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def submit(r, spec: Spec, team: str, folder: str = "random_search"):
    data = archive.pack(SUBMISSIONS / folder, spec.submission)
    return create_submission(r, team=team, data=data, spec=spec, phase="feedback", backend="process")


def test_rescore_scores_version_2_and_keeps_version_1(r, redis_server, unsafe_ok):
    spec = quick_spec()
    teams.add_team(r, "alpha")
    sid = submit(r, spec, "alpha").id
    burst_worker(redis_server)
    first = load_submission(r, sid)
    assert first.state == SubmissionState.SCORED and first.score_version == 1
    report_v1 = scores.report(r, sid)
    used = quotas.remaining(r, "alpha", spec).used

    again = service.rescore(r, sid, actor="tester", spec=spec, reason="new image")
    assert again.score_version == 2 and again.state == SubmissionState.QUEUED
    assert again.score is None and again.failure is None and again.progress.studies_done == 0
    assert again.progress.studies_total == 2
    assert Queue(keys.PRIORITY_QUEUE, connection=rq_connection()).count == 2  # organizer work goes first
    view = service.public_view(service.status(r, "alpha", sid))
    assert view["state"] == "queued" and view["score"] is None
    # Meanwhile the leaderboard shows the last scored version, and says which.
    (row,) = service.leaderboard(r, "feedback", spec.name)
    assert (row["submission"], row["score"], row["score_version"]) == (sid, first.score, 1)
    with pytest.raises(service.Conflict, match="stop it first"):
        service.rescore(r, sid, spec=spec)

    burst_worker(redis_server)
    second = load_submission(r, sid)
    assert second.state == SubmissionState.SCORED and second.score_version == 2
    assert second.progress.studies_done == 2 and second.score is not None
    assert scores.report(r, sid)["score_version"] == 2
    old = scores.report(r, sid, version=1)
    assert old["score_version"] == 1 and old["problems"] == report_v1["problems"]
    (row,) = service.leaderboard(r, "feedback", spec.name)
    assert (row["score"], row["score_version"]) == (second.score, 2)

    history = rescore.versions(r, sid)
    assert [v["version"] for v in history] == [1, 2]
    assert history[0]["state"] == "scored" and history[0]["score"] == first.score
    assert (
        history[1]["reason"] == "new image" and history[1]["current"] and history[1]["score"] == second.score
    )
    (entry,) = [e for e in audit.read(r, target=sid) if e.action == "rescore"]
    assert (
        entry.actor == "tester" and entry.details["version"] == 2 and entry.details["reason"] == "new image"
    )
    assert quotas.remaining(r, "alpha", spec).used == used  # never charged


def test_rescore_refusals_and_a_stopped_submission_under_the_current_spec(r, redis_server):
    spec = quick_spec()
    with pytest.raises(service.NotFound):
        service.rescore(r, "s00000000aaaaaaaaaa")
    sub = submit(r, spec, "alpha")
    with pytest.raises(service.Conflict, match="queued .*stop it first"):
        service.rescore(r, sub.id)
    service.stop(r, sub.id, actor="tester")

    again = service.rescore(r, sub.id, actor="tester")  # the shipped demo spec as it is now
    demo = load("demo")
    assert again.score_version == 2 and again.spec_hash == demo.hash
    assert again.progress.studies_total == 8
    assert r.get(keys.spec(demo.hash)) is not None  # workers find the new rules
    assert service.leaderboard(r, "feedback", spec.name, registered_only=False) == []  # never scored
    # A late write of version 1 is refused and counts nothing.
    late = StudyResult(study=0, state=StudyState.COMPLETE, losses=[[0.5]])
    assert write_study(r, sub.id, 1, "DT-iris-acc", late, 0.5) == -1
    assert load_submission(r, sub.id).progress.studies_done == 0
    # Two organizers racing: only one new version starts.
    service.stop(r, sub.id)
    assert start_score_version(r, sub.id, 2) is not None
    assert start_score_version(r, sub.id, 2) is None
    with pytest.raises(service.Conflict, match="belongs to competition"):
        service.stop(r, sub.id)
        service.rescore(r, sub.id, spec=dataclasses.replace(spec, name="other"))
