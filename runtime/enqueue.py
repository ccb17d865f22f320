"""Putting a score version's jobs on the queues: one RQ job per (problem, chunk of studies), each with its
payload, deterministic id, timeout, TTLs, retries and failure callback.

The job function is named, not imported: RQ stores the name and the worker resolves it, and the worker
layer sits above this one (tests/runtime/test_job_names.py checks the names resolve).
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Callback, Queue, Retry

from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.ids import job_id
from queue_schema.payloads import Progress, ScoreJob, Submission
from runtime import dispatch, warm_hint
from runtime.spec import Spec

JOB_FUNCTION = "workers.job.score_problem"
FAILURE_CALLBACK = "workers.failures.on_job_failure"
RESULT_TTL_S = 7 * 24 * 3600  # a finished job's RQ record (its result) is kept a week


def phase_progress(spec: Spec, phase: str) -> Progress:
    """A fresh score version's counters: nothing done yet, every study and evaluation of the phase to do."""
    p = spec.phase(phase)
    studies = len(p.problems) * p.studies
    return Progress(studies_total=studies, evals_total=studies * spec.evals_per_study)


def expected_jobs(sub: Submission, spec: Spec) -> list[str]:
    """Every job id of the submission's current score version."""
    phase = spec.phase(sub.phase)
    return [job_id(sub.id, sub.score_version, problem, chunk) for problem, chunk, _ in phase.jobs()]


def enqueue_jobs(
    r: redis.Redis,
    sub: Submission,
    spec: Spec,
    *,
    backend: str = "auto",
    priority: bool = False,
    skip: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """One job per (problem, chunk of studies), except the ids in `skip` (enqueued already).

    A job joins the submission's job set only once it is in its queue, so after a crash mid-way the set
    says exactly which jobs are missing (the reaper enqueues those)."""
    phase = spec.phase(sub.phase)
    # Organizer work jumps every team; a team's jobs wait only behind its own (runtime/dispatch.py).
    name = keys.PRIORITY_QUEUE if priority else dispatch.team_queue(r, sub.team)
    queue = Queue(name, connection=rq_connection())
    # Before the jobs: a worker that boots now, or sits idle, warms a sandbox for them (runtime/warm_hint.py).
    warm_hint.record(r, backend, spec.limits)
    seconds = dispatch.costs_for(spec.name, phase.problems).seconds_per_eval  # one read of the cost tables
    ids = []
    for problem, chunk, studies in dispatch.order_jobs(spec, phase, seconds):
        jid = job_id(sub.id, sub.score_version, problem, chunk)
        if jid in skip:
            continue
        queue.enqueue_call(**job_options(sub, spec, problem, chunk, studies, backend, seconds[problem]))
        r.sadd(keys.submission_jobs(sub.id, sub.score_version), jid)
        ids.append(jid)
    return ids


def job_options(
    sub: Submission,
    spec: Spec,
    problem: str,
    chunk: int,
    studies: list[int],
    backend: str,
    seconds_per_eval: float | None = None,
) -> dict[str, Any]:
    """Everything RQ is told about one job (Queue.enqueue_call's and Queue.prepare_data's arguments):
    the payload, its deterministic id, timeout, TTLs, retries and failure callback.

    The timeout comes from the cost table that orders the jobs (`dispatch.job_timeout`);
    `seconds_per_eval` is the problem's figure when the caller has read the table already."""
    if seconds_per_eval is None:
        seconds_per_eval = dispatch.costs_for(spec.name, [problem]).seconds_per_eval[problem]
    payload = ScoreJob(
        submission_id=sub.id,
        score_version=sub.score_version,
        problem=problem,
        studies=studies,
        chunk=chunk,
        phase=sub.phase,
        spec_hash=spec.hash,
        artifact_sha256=sub.artifact_sha256,
        backend=backend,
    )
    return {
        "func": JOB_FUNCTION,
        "args": (payload.model_dump(mode="json"),),
        "job_id": job_id(sub.id, sub.score_version, problem, chunk),
        "timeout": dispatch.job_timeout(spec, seconds_per_eval, len(studies)),
        "result_ttl": RESULT_TTL_S,
        "failure_ttl": 30 * 24 * 3600,
        "retry": Retry(max=2),
        "on_failure": Callback(FAILURE_CALLBACK),
        "description": f"{sub.id} v{sub.score_version} {problem} #{chunk}",
    }
