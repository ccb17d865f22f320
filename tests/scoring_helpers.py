"""Score a tiny real submission through the real queue: one fast problem, one study, the process backend."""

from __future__ import annotations

import dataclasses
import math

from rq import Queue, SimpleWorker

from artifacts import archive
from competition.submit import create_submission
from queue_schema.connection import rq_connection
from queue_schema.payloads import Submission
from queue_schema.records import load_submission
from runtime import dispatch
from runtime.spec import Spec, load
from tests.conftest import SUBMISSIONS

PROBLEM = "DT-iris-acc"  # the fastest problem the demo baselines cover


def tiny_spec(**feedback_changes) -> Spec:
    """The demo spec (its rounds x batch, so its baselines apply) cut to one problem and one study."""
    spec = load("demo")
    feedback = dataclasses.replace(
        spec.phases["feedback"], problems=(PROBLEM,), studies=1, studies_per_job=1, **feedback_changes
    )
    return dataclasses.replace(spec, phases={**spec.phases, "feedback": feedback})


def score_tiny(r, team: str, spec: Spec | None = None, folder: str = "random_search") -> Submission:
    """Create a submission and run the queue until it is done; needs BBO_ALLOW_UNSAFE_SANDBOX=1."""
    spec = spec or tiny_spec()
    data = archive.pack(SUBMISSIONS / folder, spec.submission)
    sub = create_submission(r, team=team, data=data, spec=spec, phase="feedback", backend="process")
    conn = rq_connection()
    queues = [Queue(name, connection=conn) for name in dispatch.queue_names(r)]
    SimpleWorker(queues, connection=conn).work(burst=True, logging_level="WARNING")
    return load_submission(r, sub.id)


def recompute(report: dict) -> float:
    """The command contract's formula, from nothing but a score report's JSON."""
    per_problem = []
    for problem in report["problems"]:
        clip, opt = problem["clip"], problem["opt"]
        per_study = []
        for study in problem["studies"]:
            losses = [math.inf if v is None else v for round_ in study["losses"] for v in round_]
            best = min(losses, default=math.inf)
            per_study.append(min(max((best - opt) / (clip - opt), -1.0), 1.0))
        per_problem.append(sum(per_study) / len(per_study))
    return 100.0 * (1.0 - sum(per_problem) / len(per_problem))
