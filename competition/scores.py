"""What a scored submission shows: the report (per problem, per study), its provenance, its convergence
curves, the team's own view of it, the export.

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
from baselines.export_json import export_json as write_json
from queue_schema import keys
from queue_schema.payloads import StudyResult, Submission
from queue_schema.records import load_submission
from runtime import versions
from runtime.errors import SpecError
from runtime.provenance import score_provenance
from runtime.spec import Spec, stored_spec


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


def convergence(
    r: redis.Redis, sub: Submission, problems: list[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """The convergence curves of a report's `problems` (`report(...)["problems"]`): the mean normalized
    best-so-far per round over the finished studies (each problem's studies averaged first, then the
    problems), and random search's mean normalized curve over the same problems. Empty curves when the
    spec or the baselines are missing: a plot is never worth an error.

    The organizer console and the teams' pages both draw these, so they are computed here, once."""
    spec = stored_spec(r, sub.spec_hash)
    if spec is None:
        return [], []
    baselines = versions.baselines_or_none(spec)
    if baselines is None:
        return [], []
    per_problem, randoms = [], []
    for problem in problems:
        # From the report's losses, clip and opt: each study's last point is its score as the report shows it.
        curves = [
            scoring.study_normalized_curve(study["losses"], problem["clip"], problem["opt"], spec.rounds)
            for study in problem["studies"]
        ]
        if not curves:
            continue  # no finished study of this problem yet: it joins the mean once it has one
        per_problem.append([sum(values) / len(values) for values in zip(*curves, strict=True)])
        try:
            randoms.append(list(baselines.problem(problem["problem"]).mean_normed))
        except versions.BaselineError:
            continue
    return _mean_curves(per_problem), _mean_curves(randoms)


def _mean_curves(curves: list[list[float]]) -> list[float]:
    if not curves:
        return []
    length = min(len(c) for c in curves)
    return [sum(c[i] for c in curves) / len(curves) for i in range(length)]


def public_detail(r: redis.Redis, sub: Submission) -> dict[str, Any]:
    """What a team's page shows of its own submission: the convergence curves, the rounds scored, and
    each problem's leaderboard score, the latter only for a feedback-phase submission whose spec does not
    obfuscate problem names (with obfuscation the names are the secret it keeps; the final phase's
    problems are held out): otherwise the page shows the aggregate curve only.

    Never raises for a submission that is merely early (queued, running, no finished study) or whose
    baselines are missing: its curves are empty then, and the page still renders."""
    spec = stored_spec(r, sub.spec_hash)
    out: dict[str, Any] = {
        "curve": [],
        "random": [],
        "rounds": spec.rounds if spec is not None else 0,
        "problems": [],
    }
    try:
        problems = report(r, sub.id)["problems"]
    except (versions.BaselineError, versions.ScoreError, SpecError):
        return out
    out["curve"], out["random"] = convergence(r, sub, problems)
    # A spec that cannot be read hides the names too: when in doubt, show less.
    if spec is not None and not spec.obfuscate_names and sub.phase == "feedback":
        out["problems"] = [{"problem": p["problem"], "score": p["score"]} for p in problems]
    return out


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


EXPORT_FORMATS = ("auto", "bayesmark", "json")


def export(r: redis.Redis, sid: str, directory: Path, version: int | None = None, fmt: str = "auto") -> Path:
    """Write a submission's studies: bayesmark's database where every problem is bayesmark's (`auto`), the
    documented JSON otherwise (docs/export.md). Raises ScoreError with a one-line reason."""
    if fmt not in EXPORT_FORMATS:
        raise versions.ScoreError(f"unknown format {fmt!r} (formats: {', '.join(EXPORT_FORMATS)})")
    sub = load_submission(r, sid)
    if sub is None:
        raise versions.ScoreError(f"no submission {sid}")
    version = version or sub.score_version
    spec = versions.spec_of_version(r, sub, version)
    studies = versions.studies_by_problem(r, sub, spec, version)
    if not any(studies.values()):
        raise versions.ScoreError(f"submission {sid} has no finished studies to export")
    bayesmark_ok = all(spec.suite_set.of(p).bayesmark_export for p in studies)
    if fmt == "bayesmark" and not bayesmark_ok:
        raise versions.ScoreError(
            "bayesmark's format holds only bayesmark's own problems; use --format json for this spec"
        )
    name = f"{sub.team}-{sub.id}"
    if fmt == "json" or not bayesmark_ok:
        return write_json(studies, versions.baselines_for(spec), directory, optimizer_name=name)
    return write_bayesmark(studies, versions.baselines_for(spec), directory, optimizer_name=name)


def export_bayesmark(r: redis.Redis, sid: str, directory: Path, version: int | None = None) -> Path:
    return export(r, sid, directory, version, fmt="bayesmark")
