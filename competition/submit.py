"""Accepting a submission: check the archive, store it by digest, record it, enqueue one job per problem."""

from __future__ import annotations

from typing import Any

import redis
from rq import Callback, Queue, Retry

from artifacts import archive
from competition import scores
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.ids import job_id, new_submission_id
from queue_schema.payloads import Progress, ScoreJob, Submission
from queue_schema.records import add_event, save_new_submission
from runtime import dispatch
from runtime.spec import Spec

JOB_FUNCTION = "workers.job.score_problem"
RESULT_TTL_S = 7 * 24 * 3600  # a finished job's RQ record (its result) is kept a week


def create_submission(
    r: redis.Redis,
    *,
    team: str,
    data: bytes,
    spec: Spec,
    phase: str,
    filename: str = "submission.zip",
    backend: str = "auto",
    priority: bool = False,
    check_baselines: bool = True,
) -> Submission:
    """Validate everything first, so a rejected upload writes nothing; then store and enqueue.

    `check_baselines=False` is for timing runs on problems without baselines: the studies run, and the
    score version then fails as `infrastructure` with the missing baseline named.
    """
    artifact = archive.check(data, spec.submission)
    phase_spec = spec.phase(phase)
    baseline_version = ""
    if check_baselines:
        baseline_version = scores.baselines_for(spec, required=phase_spec.problems).version
    sub = Submission(
        id=new_submission_id(),
        team=team,
        artifact_sha256=artifact.sha256,
        filename=filename,
        spec_name=spec.name,
        spec_hash=spec.hash,
        phase=phase,
        baseline_version=baseline_version,
        backend=backend,
        progress=phase_progress(spec, phase),
    )
    r.set(keys.spec(spec.hash), spec.to_json())
    archive.store(r, artifact)
    save_new_submission(r, sub)
    add_event(r, "submitted", sub.id, team=team, phase=phase, spec=spec.name, sha256=artifact.sha256)
    enqueue_jobs(r, sub, spec, backend=backend, priority=priority)
    return sub


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
    ids = []
    for problem, chunk, studies in dispatch.order_jobs(spec, phase):
        jid = job_id(sub.id, sub.score_version, problem, chunk)
        if jid in skip:
            continue
        queue.enqueue_call(**job_options(sub, spec, problem, chunk, studies, backend))
        r.sadd(keys.submission_jobs(sub.id, sub.score_version), jid)
        ids.append(jid)
    return ids


def job_options(
    sub: Submission, spec: Spec, problem: str, chunk: int, studies: list[int], backend: str
) -> dict[str, Any]:
    """Everything RQ is told about one job (Queue.enqueue_call's and Queue.prepare_data's arguments):
    the payload, its deterministic id, timeout, TTLs, retries and failure callback."""
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
        "timeout": _job_timeout(spec, len(studies)),
        "result_ttl": RESULT_TTL_S,
        "failure_ttl": 30 * 24 * 3600,
        "retry": Retry(max=2),
        "on_failure": Callback("workers.failures.on_job_failure"),
        "description": f"{sub.id} v{sub.score_version} {problem} #{chunk}",
    }


def _job_timeout(spec: Spec, studies: int) -> int:
    # The optimizer's own budget plus generous room for the objective (bayesmark's slowest problem
    # needs about 2 s per evaluation single-threaded).
    per_study = spec.limits.suggest_budget_s + 3.0 * spec.evals_per_study + 60
    return int(studies * per_study + 300)
