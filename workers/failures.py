"""What happens when a job raises: retry infrastructure trouble, then fail it as infrastructure."""

from __future__ import annotations

from typing import Any

from competition import lifecycle
from queue_schema.connection import connect
from queue_schema.payloads import ScoreJob
from queue_schema.states import FailureCause


def on_job_failure(job: Any, connection: Any, exc_type: type, exc_value: BaseException, tb: Any) -> None:
    """RQ failure callback. A job that still has retries left will run again; only the last failure counts.

    Anything that escapes the job is ours, not the team's (their errors are handled inside the job), so
    the submission fails with `infrastructure` and is not charged to the team.
    """
    if getattr(job, "retries_left", 0):
        return
    payload = ScoreJob.model_validate(job.args[0])
    lifecycle.fail(
        connect(),
        payload.submission_id,
        payload.score_version,
        FailureCause.INFRASTRUCTURE,
        f"scoring infrastructure error ({exc_type.__name__}); not charged to your quota",
    )
