"""Ending a submission early: a fatal optimizer error fails the batch; a stop keeps what is finished."""

from __future__ import annotations

import contextlib

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.payloads import Submission
from queue_schema.records import load_submission, transition
from queue_schema.states import ACTIVE_STATES, FailureCause, SubmissionState
from runtime.spec import SubmissionRules, stored_spec


def fail(r: redis.Redis, sid: str, version: int, cause: FailureCause, message: str) -> Submission | None:
    """Mark the score version failed with a typed cause and cancel its queued jobs.

    Running jobs of the same version notice the state within a second and kill their sandboxes.
    Infrastructure failures of an upload's first scoring are not the team's fault and are refunded, up
    to the spec's `submission.refunds_per_day` per team; past that the refund waits for an organizer
    (`decide_refund`), and the message says which. Only the upload's own scoring (version 1) decides the
    quota: an organizer's rescore that hits infrastructure trouble must not refund an upload that was
    scored.
    """
    refunds = _refunds_per_day(r, sid) if cause == FailureCause.INFRASTRUCTURE and version == 1 else None
    sub = transition(
        r,
        sid,
        SubmissionState.FAILED,
        version=version,
        only_from=ACTIVE_STATES,
        failure=(cause, message),
        refunds_per_day=refunds,
    )
    if sub is not None:
        cancel_queued_jobs(r, sid, version)
    return sub


def _refunds_per_day(r: redis.Redis, sid: str) -> int:
    """The spec's automatic refunds per team and day, from the spec the submission was made under."""
    sub = load_submission(r, sid)
    spec = stored_spec(r, sub.spec_hash) if sub is not None else None
    return (spec.submission if spec is not None else SubmissionRules()).refunds_per_day


def cancel_queued_jobs(r: redis.Redis, sid: str, version: int) -> int:
    """Cancel the jobs of a score version that have not started; returns how many."""
    cancelled = 0
    conn = rq_connection()
    for job_id in r.smembers(keys.submission_jobs(sid, version)):
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
            job = Job.fetch(job_id, connection=conn)
            if job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                job.cancel()
                cancelled += 1
    return cancelled
