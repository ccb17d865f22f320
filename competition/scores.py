"""What a scored submission shows: the report (per problem, per study), its provenance, the export.

The running and final scores themselves are runtime/versions.py's, computed as the studies are written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import redis

from baselines import scoring
from baselines.export import export_bayesmark as write_bayesmark
from queue_schema import keys
from queue_schema.payloads import StudyResult, Submission
from queue_schema.records import load_submission
from runtime import versions
from runtime.provenance import score_provenance
from runtime.spec import Spec


def report(r: redis.Redis, sid: str, version: int | None = None) -> dict[str, Any]:
    """The command contract's submission object plus `problems` (organizer view: real problem names)."""
    sub = load_submission(r, sid)
    if sub is None:
        raise versions.ScoreError(f"no submission {sid}")
    version = version or sub.score_version
    spec = versions.spec_of_version(r, sub, version)
    baselines = versions.baselines_for(spec)
    studies = versions.studies_by_problem(r, sub, spec, version)
    problems = []
    for problem, found in studies.items():
        clip, opt = versions.clip_opt(baselines, problem)
        # Each study's normalized score as stored when it was written (computed for older records).
        normalized = [versions.stored_or_computed(baselines, problem, s, spec.rounds) for s in found]
        known = [v for v in normalized if v is not None]
        mean = sum(known) / len(known) if known and len(known) == len(normalized) else None
        problems.append(
            {
                "problem": problem,
                "clip": clip,
                "opt": opt,
                "normalized": mean,
                "score": None if mean is None else scoring.leaderboard_score(mean),
                "studies": [
                    {
                        "study": s.study,
                        "state": s.state.value,
                        "normalized": value,
                        "score": None if value is None else scoring.leaderboard_score(value),
                        "losses": [[_finite_or_none(v) for v in round_] for round_ in s.losses],
                        "cut_off_reason": s.cut_off_reason,
                    }
                    for s, value in zip(found, normalized, strict=True)
                ],
            }
        )
    out = sub.public_view()
    out.update(
        {
            "spec": spec.name,
            "spec_hash": spec.hash,
            "phase": sub.phase,
            "score_version": version,
            "baseline_version": sub.baseline_version,
            "provenance": provenance(r, sub, spec, baselines, version, studies),
            "problems": problems,
        }
    )
    return out


def provenance(
    r: redis.Redis,
    sub: Submission,
    spec: Spec,
    baselines: Any,
    version: int,
    studies: dict[str, list[StudyResult]],
) -> dict[str, Any]:
    """What the score version was computed with: as stored when it was scored, else from its studies."""
    stored = r.hget(keys.score_version(sub.id, version), "provenance")
    return json.loads(stored) if stored else score_provenance(sub, spec, baselines, studies)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def export_bayesmark(r: redis.Redis, sid: str, directory: Path, version: int | None = None) -> Path:
    sub = load_submission(r, sid)
    if sub is None:
        raise versions.ScoreError(f"no submission {sid}")
    version = version or sub.score_version
    spec = versions.spec_of_version(r, sub, version)
    studies = versions.studies_by_problem(r, sub, spec, version)
    if not any(studies.values()):
        raise versions.ScoreError(f"submission {sid} has no finished studies to export")
    return write_bayesmark(
        studies, versions.baselines_for(spec), directory, optimizer_name=f"{sub.team}-{sub.id}"
    )
