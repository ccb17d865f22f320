"""Accepting a submission: check the archive, store it by digest, record it, enqueue one job per problem."""

from __future__ import annotations

import redis

from artifacts import archive
from queue_schema import keys
from queue_schema.ids import new_submission_id
from queue_schema.payloads import Submission
from queue_schema.records import add_event, save_new_submission
from runtime import versions
from runtime.enqueue import enqueue_jobs, phase_progress
from runtime.spec import Spec


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
        baseline_version = versions.baselines_for(spec, required=phase_spec.problems).version
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
