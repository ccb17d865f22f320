"""A score version's numbers while it runs and when it ends: each study's normalized score, and the
version's final score once every job of it has finished (exactly one caller wins that transition).

The numbers come from bayesmark's own aggregation (baselines.scoring); this module gathers the study data
from the store, loads the baselines the version's spec names, and decides when the version is complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from baselines import scoring
from baselines.store import BaselineError, MissingBaseline, load_baselines
from queue_schema import keys
from queue_schema.payloads import StudyResult, Submission
from queue_schema.records import load_submission, read_studies, transition
from queue_schema.states import FailureCause, SubmissionState
from runtime import lifecycle
from runtime.errors import ScoreError
from runtime.provenance import score_provenance
from runtime.spec import Spec, stored_spec

__all__ = ["BaselineError", "MissingBaseline", "ScoreError"]


def baselines_for(spec: Spec, required: Iterable[str] | None = None) -> Any:
    """The spec's baselines; with `required`, raise MissingBaseline naming the first problem not covered."""
    baselines = load_baselines(spec.baseline_plan())
    for problem in required or ():
        baselines.problem(problem)
    return baselines


def baselines_or_none(spec: Spec) -> Any:
    """For the running score only: without baselines the studies still run (the final check fails them)."""
    try:
        return load_baselines(spec.baseline_plan())
    except BaselineError:
        return None


def clip_opt(baselines: Any, problem: str) -> tuple[float, float]:
    entry = baselines.problem(problem)
    if isinstance(entry, dict):
        return float(entry["clip"]), float(entry["opt"])
    return float(entry.clip), float(entry.opt)


def study_normalized(baselines: Any, problem: str, result: StudyResult, rounds: int) -> float | None:
    """The study's normalized score at its last iteration (the running score adds these up)."""
    if baselines is None:
        return None
    try:
        clip, opt = clip_opt(baselines, problem)
    except BaselineError:
        return None
    losses = [[StudyResult.decode_loss(v) for v in round_] for round_ in result.losses]
    return scoring.study_normalized_curve(losses, clip, opt, rounds)[-1]


def stored_or_computed(baselines: Any, problem: str, result: StudyResult, rounds: int) -> float | None:
    """The study's normalized score as stored when it was written (`StudyResult.normalized`); computed
    with `baselines` for a record written before it was stored (or written without baselines)."""
    if result.normalized is not None:
        return result.normalized
    return study_normalized(baselines, problem, result, rounds)


def spec_of_version(r: redis.Redis, sub: Submission, version: int | None = None) -> Spec:
    """The spec a score version was computed under: a rescore may have moved the submission to a newer
    spec, and an old version must still read with its own problems and rounds."""
    spec_hash = sub.spec_hash
    if version is not None and version != sub.score_version:
        spec_hash = r.hget(keys.score_version(sub.id, version), "spec_hash") or spec_hash
    spec = stored_spec(r, spec_hash)
    if spec is None:
        raise ScoreError(f"spec {spec_hash} of submission {sub.id} is not in the store")
    return spec


def studies_by_problem(
    r: redis.Redis, sub: Submission, spec: Spec, version: int
) -> dict[str, list[StudyResult]]:
    phase = spec.phase(sub.phase)
    out = {}
    for problem in phase.problems:
        found = read_studies(r, sub.id, version, problem)
        out[problem] = [found[i] for i in sorted(found)]
    return out


def losses_of(studies: list[StudyResult]) -> list[list[list[float]]]:
    return [[[StudyResult.decode_loss(v) for v in round_] for round_ in s.losses] for s in studies]


def finalize_if_complete(r: redis.Redis, sid: str, version: int) -> bool:
    """Score the version once every job of it has finished; exactly one caller wins the transition."""
    sub = load_submission(r, sid)
    if sub is None or sub.score_version != version:
        return False
    spec = spec_of_version(r, sub)
    phase = spec.phase(sub.phase)
    expected = len(phase.jobs())
    if r.scard(keys.problems_done(sid, version)) < expected:
        return False
    studies = studies_by_problem(r, sub, spec, version)
    try:
        baselines = baselines_for(spec, required=studies)
    except BaselineError as exc:
        lifecycle.fail(r, sid, version, FailureCause.INFRASTRUCTURE, str(exc))
        return False
    result = scoring.score_problems({p: losses_of(s) for p, s in studies.items()}, baselines, spec.rounds)
    scored_at = time.time()
    r.hset(
        keys.score_version(sid, version),
        mapping={
            "score": repr(result.score),
            "spec_hash": spec.hash,
            "baseline_version": sub.baseline_version,
            "scored_at": repr(scored_at),
            "provenance": json.dumps(score_provenance(sub, spec, baselines, studies), sort_keys=True),
        },
    )
    return (
        transition(
            r,
            sid,
            SubmissionState.SCORED,
            version=version,
            only_from=[SubmissionState.RUNNING, SubmissionState.QUEUED],
            score=result.score,
            scored_at=scored_at,
        )
        is not None
    )
