"""Whose failure is it: the one rule that separates our infrastructure's failures from the team's.

Everything a team controls is hostile input (DESIGN.md, "The trust boundary"): while a job handles the
team's bytes (extracting its archive, installing its wheels, driving its optimizer), any failure is the
team's typed cause unless it is positively identified as ours by `is_ours`: the store, the container
engine, a lost sandbox, the worker's own disk or memory, RQ's job timeout. Only those become
`infrastructure`, retried and refunded (within the spec's `submission.refunds_per_day`).
"""

from __future__ import annotations

from typing import Any

import redis

from queue_schema.connection import connect
from queue_schema.payloads import ScoreJob
from queue_schema.states import OUR_OS_ERRNOS, FailureCause
from runtime import lifecycle, rq_adapter
from workers.harness import SandboxInfrastructureError
from workers.sandbox.base import SandboxUnavailable


def is_ours(exc: BaseException) -> bool:
    """Whether `exc`, raised while a job handled a team's submission, is a failure of our infrastructure."""
    if isinstance(exc, SandboxInfrastructureError | SandboxUnavailable | redis.RedisError | MemoryError):
        return True
    if isinstance(exc, rq_adapter.JobTimeout):  # RQ's job timeout: generous, sized from our cost table
        return True
    return isinstance(exc, OSError) and exc.errno in OUR_OS_ERRNOS


def on_job_failure(job: Any, connection: Any, exc_type: type, exc_value: BaseException, tb: Any) -> None:
    """RQ failure callback. A job that still has retries left will run again; only the last failure counts.

    The job turns every failure of the team's into the team's cause itself (workers/job.py), so whatever
    escapes it is ours: the submission fails with `infrastructure`, refunded within the day's cap.
    """
    if getattr(job, "retries_left", 0):
        return
    payload = ScoreJob.model_validate(job.args[0])
    lifecycle.fail(
        connect(),
        payload.submission_id,
        payload.score_version,
        FailureCause.INFRASTRUCTURE,
        f"scoring infrastructure error ({exc_type.__name__})",
    )
