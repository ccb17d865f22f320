"""Rescore: a new score version of the same artifact, under the current spec, baselines and image.

A rescore is organizer work: it never charges a team's quota, its jobs go to the priority queue, and it
is audited. The submission's record moves to the new version in one atomic step (state queued, score
and failure cleared, live counters reset); jobs of the old version see the version change and stop, and
their late writes are refused. Nothing of an old version is deleted: its study results stay under their
own keys (`scores.report(r, sid, version=1)` still reads them) and its version record gets a closing
summary. While the new version runs, or if it ends unscored, the leaderboard keeps showing the last
scored version and says which one (`Submission.last_scored`, rows' `score_version`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis
from rq.job import Job

from competition import audit
from competition.errors import Conflict, NotFound
from queue_schema import keys
from queue_schema.connection import rq_connection
from queue_schema.payloads import ScoredVersion, Submission
from queue_schema.records import (
    load_submission,
    load_submissions,
    scored_ids,
    scored_time,
    start_score_version,
    version_jobs,
)
from queue_schema.states import ACTIVE_STATES, SubmissionState
from runtime.enqueue import enqueue_jobs, phase_progress
from runtime.spec import Spec, SpecError, load, stored_spec
from runtime.versions import baselines_for

__all__ = ["current_spec", "rescore", "rescore_all", "versions"]


def current_spec(r: redis.Redis, sub: Submission) -> Spec:
    """The competition's spec as it is now (the shipped file of the submission's spec name); a spec that
    was given by path and is not shipped falls back to the one the submission was scored under."""
    try:
        return load(sub.spec_name)
    except SpecError:
        spec = stored_spec(r, sub.spec_hash)
        if spec is None:
            raise
        return spec


def rescore(
    r: redis.Redis,
    sid: str,
    *,
    actor: str | None = None,
    spec: Spec | None = None,
    reason: str = "",
    backend: str | None = None,
) -> Submission:
    """Start the next score version of a scored, stopped or failed submission and enqueue its jobs.

    `spec` defaults to the current spec of the submission's competition; `backend` to the sandbox its last
    version asked for. Raises NotFound, Conflict (active, raced, artifact gone, other competition),
    SpecError (the phase is gone) or BaselineError (no baselines for the phase's problems)."""
    sub = load_submission(r, sid) if isinstance(sid, str) and 0 < len(sid) <= 64 else None
    if sub is None:
        raise NotFound(f"no submission {str(sid)[:64]!r}")
    if sub.state in ACTIVE_STATES:
        raise Conflict(
            f"submission {sid} is {sub.state.value} (version {sub.score_version}); "
            "stop it first, then rescore"
        )
    spec = spec or current_spec(r, sub)
    if spec.name != sub.spec_name:
        raise Conflict(f"submission {sid} belongs to competition {sub.spec_name!r}, not {spec.name!r}")
    phase = spec.phase(sub.phase)
    baselines = baselines_for(spec, required=phase.problems)
    if not r.exists(keys.artifact(sub.artifact_sha256)):
        raise Conflict(f"the artifact of submission {sid} is no longer stored; it cannot be rescored")
    backend = backend or _previous_backend(r, sub)
    old = sub.score_version
    previous = _as_scored_version(sub) or sub.previous
    r.set(keys.spec(spec.hash), spec.to_json())
    # The record keeps `previous` while the new version runs, so it stays in its phase's scored index
    # (records.start_score_version moves the index entry in the same transaction).
    started = start_score_version(
        r,
        sid,
        old,
        spec_hash=spec.hash,
        baseline_version=baselines.version,
        scored_at=None,
        previous=previous,
        backend=backend,
        progress=phase_progress(spec, sub.phase),
    )
    if started is None:
        now = load_submission(r, sid)
        where = f"{now.state.value} at version {now.score_version}" if now else "gone"
        raise Conflict(f"submission {sid} changed meanwhile (now {where}); nothing was rescored")
    _close_version(r, sub)
    r.hset(
        keys.score_version(sid, started.score_version),
        mapping={
            "spec_name": spec.name,
            "spec_hash": spec.hash,
            "baseline_version": baselines.version,
            "backend": backend,
            "created_at": repr(time.time()),
            "reason": reason,
            "actor": actor or audit.default_actor(),
        },
    )
    enqueue_jobs(r, started, spec, backend=backend, priority=True)
    audit.record(
        r,
        "rescore",
        sid,
        actor=actor,
        team=sub.team,
        version=started.score_version,
        previous_version=old,
        previous_state=sub.state.value,
        spec_hash=spec.hash,
        baseline_version=baselines.version,
        reason=reason,
    )
    return started


def rescore_all(
    r: redis.Redis,
    spec: Spec,
    *,
    phase: str | None = None,
    actor: str | None = None,
    reason: str = "",
    backend: str | None = None,
) -> tuple[list[Submission], list[tuple[str, str]]]:
    """Rescore every scored submission of the competition (of one phase, if given; else of the spec's
    phases): after new baselines or a new image. Returns the rescored submissions and (id, why) of those
    that could not be. Reads the phases' scored indexes, never every submission."""
    phases = [phase] if phase is not None else list(spec.phases)
    candidates = [sid for name in phases for sid in scored_ids(r, spec.name, name)]
    chosen = [sub.id for sub in load_submissions(r, candidates) if sub.state == SubmissionState.SCORED]
    done, skipped = [], []
    for sid in chosen:
        try:
            done.append(rescore(r, sid, actor=actor, spec=spec, reason=reason, backend=backend))
        except (Conflict, NotFound) as exc:
            skipped.append((sid, str(exc)))
    return done, skipped


def versions(r: redis.Redis, sid: str) -> list[dict[str, Any]]:
    """Every score version of a submission, oldest first: its record (spec, baselines, reason, score or
    closing state), the current one with its live state."""
    sub = load_submission(r, sid)
    if sub is None:
        raise NotFound(f"no submission {sid!r}")
    pipe = r.pipeline(transaction=False)
    for version in range(1, sub.score_version + 1):
        pipe.hgetall(keys.score_version(sid, version))
    out = []
    for version, record in enumerate(pipe.execute(), start=1):
        entry: dict[str, Any] = {"version": version, **record}
        if "score" in entry:
            entry["score"] = float(entry["score"])
        if version == sub.score_version:
            entry.update({"state": sub.state.value, "score": sub.score, "current": True})
        out.append(entry)
    return out


def _as_scored_version(sub: Submission) -> ScoredVersion | None:
    if sub.state != SubmissionState.SCORED or sub.score is None:
        return None
    return ScoredVersion(
        version=sub.score_version,
        score=sub.score,
        scored_at=scored_time(sub),
        spec_hash=sub.spec_hash,
        baseline_version=sub.baseline_version,
    )


def _close_version(r: redis.Redis, sub: Submission) -> None:
    """The replaced version's outcome, kept in its own record (the submission record moves on)."""
    summary = {
        "state": sub.state.value,
        "spec_hash": sub.spec_hash,
        "baseline_version": sub.baseline_version,
        "studies_done": str(sub.progress.studies_done),
        "closed_at": repr(time.time()),
    }
    if sub.score is not None:
        summary["score"] = repr(sub.score)
    if sub.partial_score is not None:
        summary["partial_score"] = repr(sub.partial_score)
    if sub.failure is not None:
        summary |= {"failure_cause": sub.failure.cause.value, "failure_message": sub.failure.message}
    r.hset(keys.score_version(sub.id, sub.score_version), mapping=summary)


def _previous_backend(r: redis.Redis, sub: Submission) -> str:
    """The sandbox the last version's jobs asked for (RQ keeps finished jobs for a week), else auto."""
    conn = rq_connection()
    for job_id in version_jobs(r, sub.id, sub.score_version):
        with contextlib.suppress(Exception):  # a job that expired or cannot be read tells nothing
            backend = Job.fetch(job_id, connection=conn).args[0].get("backend")
            if backend:
                return str(backend)
    return "auto"
